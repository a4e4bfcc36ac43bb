//! The sampling settings as the service serves them: the stored default and per-job overrides,
//! read once from the store and again after each change, so that agents asking for their plan
//! every few seconds never touch the database.

use std::collections::BTreeMap;
use std::sync::RwLock;

use bpmon_proto::SamplingSettings;

use crate::api::ConfigView;
use crate::server::SettingsView;
use bpmon_proto::Scope;

use crate::store::{Store, StoreError};

use super::locks::{read, write};

/// The settings in memory, as last stored.
pub struct SettingsCache {
    view: RwLock<SettingsView>,
}

impl SettingsCache {
    /// The settings `store` holds.
    pub fn load(store: &Store) -> Result<SettingsCache, StoreError> {
        Ok(SettingsCache {
            view: RwLock::new(settings_view(store)?),
        })
    }

    /// Reads the settings again after `store` changed them.
    pub fn reload(&self, store: &Store) -> Result<(), StoreError> {
        *write(&self.view) = settings_view(store)?;
        Ok(())
    }

    /// The default and every override.
    pub fn view(&self) -> SettingsView {
        read(&self.view).clone()
    }

    /// How `job_id` is sampled: its override, else the default.
    pub fn for_job(&self, job_id: &str) -> SamplingSettings {
        let s = read(&self.view);
        s.jobs.get(job_id).copied().unwrap_or(s.default)
    }

    /// What `config get` answers for `scope` (the default's scope or a job id).
    pub fn config_view(&self, scope: Scope, job_name: Option<String>) -> ConfigView {
        let s = read(&self.view);
        let own = match &scope {
            Scope::Default => Some(s.default),
            Scope::Job(id) => s.jobs.get(id).copied(),
        };
        ConfigView {
            inherited: own.is_none(),
            settings: own.unwrap_or(s.default),
            scope,
            job_name,
        }
    }
}

fn settings_view(store: &Store) -> Result<SettingsView, StoreError> {
    let mut view = SettingsView {
        default: SamplingSettings::default(),
        jobs: BTreeMap::new(),
    };
    for row in store.all_settings()? {
        match row.scope {
            Scope::Default => view.default = row.settings,
            Scope::Job(id) => {
                view.jobs.insert(id, row.settings);
            }
        }
    }
    Ok(view)
}
