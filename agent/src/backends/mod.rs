//! How one JVM's task threads are sampled. Three backends, one switch:
//!
//! - [`attach`]: bpmon's own client of HotSpot's attach protocol, one thread dump per sample
//!   (no JDK tools on the host); its OS mechanics (per-thread uid switch) in
//!   [`attach::credentials`].
//! - [`jcmd`]: the JDK's `jcmd Thread.print` as a child process, the slow fallback.
//! - [`jvmti`]: the in-process sampler, bpmon's JVMTI library loaded into the TaskManager
//!   through attach: task threads only, no global pause, exact job ids.
//!
//! [`switch`] picks one per JVM ([`BackendKind`], [`Backend`]) and unites their errors
//! ([`DumpError`]); [`dump`] holds what each sample becomes ([`ClassifiedDump`]), shared with
//! the sampling loop so that neither side imports the other back.

pub mod attach;
pub mod dump;
pub mod jcmd;
pub mod jvmti;
pub mod switch;

pub use dump::{ClassifiedDump, DumpThread, Roster, StateSample};
pub use switch::{Backend, BackendKind, DumpError, Fetched, SampleMode};
