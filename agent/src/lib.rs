//! bpmon's agent: discovery of TaskManager JVMs, the HotSpot attach client, the `jcmd` fallback,
//! and the sampling loop that turns thread dumps into per-task sample counts.
