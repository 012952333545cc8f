//! GPU counters through NVML (`nvml-wrapper`, which loads
//! `libnvidia-ml.so` at run time: a node without the NVIDIA driver simply
//! has no NVML). Series carry dcgm-exporter's names and units, so existing
//! dashboards and rules keep working: memory in MiB, power in W. Xid errors
//! arrive as NVML events on a thread of their own.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use weft_model::metric::METRIC_NAME;
use weft_model::LabelSet;

/// An opened NVML library.
pub struct NvmlReader {
    nvml: Nvml,
}

/// An Xid error reported by a GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XidEvent {
    pub gpu: u32,
    pub uuid: String,
    pub xid: u64,
}

impl NvmlReader {
    /// Loads NVML; fails on nodes without the NVIDIA driver.
    pub fn open() -> Result<Self, String> {
        Nvml::init().map(|nvml| Self { nvml }).map_err(|e| e.to_string())
    }

    /// Driver version and GPU count, for the start-up log line.
    pub fn describe(&self) -> String {
        let driver = self.nvml.sys_driver_version().unwrap_or_else(|_| "unknown".into());
        let count = self.nvml.device_count().unwrap_or(0);
        format!("driver {driver}, {count} GPU(s)")
    }

    /// Reads every GPU's counters; fields a GPU does not support are left
    /// out. `last_xid` gives the last Xid seen per GPU index.
    pub fn read(&self, hostname: &str, last_xid: &std::collections::HashMap<u32, u64>) -> Vec<(LabelSet, f64)> {
        let mut out = Vec::new();
        let count = self.nvml.device_count().unwrap_or(0);
        for index in 0..count {
            let Ok(device) = self.nvml.device_by_index(index) else { continue };
            let uuid = device.uuid().unwrap_or_default();
            let labels = LabelSet::from_pairs([
                ("gpu", index.to_string()),
                ("UUID", uuid),
                ("pci_bus_id", device.pci_info().map(|p| p.bus_id).unwrap_or_default()),
                ("device", format!("nvidia{index}")),
                ("modelName", device.name().unwrap_or_default()),
                ("Hostname", hostname.to_string()),
            ]);
            let mut push = |name: &str, value: Option<f64>| {
                if let Some(value) = value {
                    let mut series = labels.clone();
                    series.insert(METRIC_NAME, name);
                    out.push((series, value));
                }
            };
            let utilization = device.utilization_rates().ok();
            push("DCGM_FI_DEV_GPU_UTIL", utilization.as_ref().map(|u| u.gpu as f64));
            push("DCGM_FI_DEV_MEM_COPY_UTIL", utilization.as_ref().map(|u| u.memory as f64));
            let memory = device.memory_info().ok();
            const MIB: f64 = 1024.0 * 1024.0;
            push("DCGM_FI_DEV_FB_USED", memory.as_ref().map(|m| m.used as f64 / MIB));
            push("DCGM_FI_DEV_FB_FREE", memory.as_ref().map(|m| m.free as f64 / MIB));
            push("DCGM_FI_DEV_FB_RESERVED", memory.as_ref().map(|m| m.reserved as f64 / MIB));
            push("DCGM_FI_DEV_POWER_USAGE", device.power_usage().ok().map(|mw| mw as f64 / 1000.0));
            push(
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
                device.total_energy_consumption().ok().map(|mj| mj as f64),
            );
            push(
                "DCGM_FI_DEV_GPU_TEMP",
                device.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
            );
            push("DCGM_FI_DEV_SM_CLOCK", device.clock_info(Clock::SM).ok().map(f64::from));
            push("DCGM_FI_DEV_MEM_CLOCK", device.clock_info(Clock::Memory).ok().map(f64::from));
            push(
                "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
                device.current_throttle_reasons().ok().map(|r| r.bits() as f64),
            );
            if device.is_ecc_enabled().is_ok_and(|e| e.currently_enabled) {
                push(
                    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
                    device
                        .total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                        .ok()
                        .map(|c| c as f64),
                );
                push(
                    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                    device
                        .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                        .ok()
                        .map(|c| c as f64),
                );
                push(
                    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
                    device
                        .total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate)
                        .ok()
                        .map(|c| c as f64),
                );
                push(
                    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
                    device
                        .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate)
                        .ok()
                        .map(|c| c as f64),
                );
            }
            push("DCGM_FI_DEV_XID_ERRORS", Some(last_xid.get(&index).copied().unwrap_or(0) as f64));
        }
        out
    }
}

/// Watches every GPU for critical Xid errors until `stop` is set; events go
/// to `events`. Runs on its own thread (NVML's wait blocks).
pub fn watch_xid(stop: Arc<AtomicBool>, events: std::sync::mpsc::SyncSender<XidEvent>) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("weft-nvml-xid".into())
        .spawn(move || {
            let nvml = match Nvml::init() {
                Ok(nvml) => nvml,
                Err(e) => {
                    tracing::warn!(error = %e, "NVML Xid watch not started");
                    return;
                }
            };
            let count = nvml.device_count().unwrap_or(0);
            // A GPU that cannot report events is left out; the set is rebuilt
            // without it (registration consumes the set on failure).
            let mut unsupported = HashSet::new();
            let set = 'build: loop {
                let Ok(mut set) = nvml.create_event_set() else { return };
                for index in 0..count {
                    if unsupported.contains(&index) {
                        continue;
                    }
                    let Ok(device) = nvml.device_by_index(index) else { continue };
                    match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                        Ok(next) => set = next,
                        Err(e) => {
                            tracing::info!(gpu = index, error = %e.error, "GPU does not report Xid events");
                            unsupported.insert(index);
                            continue 'build;
                        }
                    }
                }
                break set;
            };
            while !stop.load(Ordering::Acquire) {
                match set.wait(1000) {
                    Ok(event) => {
                        let xid = match event.event_data {
                            Some(XidError::Value(v)) => v,
                            _ => 0,
                        };
                        let gpu = event.device.index().unwrap_or(0);
                        let uuid = event.device.uuid().unwrap_or_default();
                        let _ = events.try_send(XidEvent { gpu, uuid, xid });
                    }
                    Err(NvmlError::Timeout) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for NVML events failed");
                        std::thread::sleep(std::time::Duration::from_secs(5));
                    }
                }
            }
        })
        .map_err(|e| e.to_string())
}

/// What an Xid number usually means (NVIDIA's Xid catalogue, short form).
pub fn xid_meaning(xid: u64) -> &'static str {
    match xid {
        13 => "Graphics Engine Exception",
        31 => "GPU memory page fault",
        32 => "Invalid or corrupted push buffer stream",
        43 => "GPU stopped processing",
        45 => "Preemptive cleanup, due to previous errors",
        48 => "Double Bit ECC Error",
        61 | 62 => "Internal micro-controller error",
        63 | 64 => "ECC page retirement or row remapping",
        74 => "NVLink Error",
        79 => "GPU has fallen off the bus",
        92 => "High single-bit ECC error rate",
        94 => "Contained ECC error",
        95 => "Uncontained ECC error",
        119 | 120 => "GSP RPC timeout / GSP error",
        _ => "GPU error",
    }
}
