//! Resource readings of this machine: CPU, memory, load, disks and NVIDIA GPUs.
//!
//! [`Sampler::sample`] takes one [`Resources`]. It is synchronous and may block for up to
//! [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] on its first call (CPU usage is a difference
//! between two readings), so run it on a blocking thread.
//!
//! GPUs are read through NVML, which is loaded at run time from the NVIDIA driver
//! (`libnvidia-ml.so.1`). A machine without the driver simply has no GPUs: the reason is
//! logged once at info level and kept for [`Sampler::no_gpu_reason`]. With
//! `simulate_gpus > 0` NVML is never touched and the report carries synthetic GPUs, marked
//! as such, for testing the hub on machines without GPUs.
//!
//! NVML's raw values go through the pure `map_gpu`, which does the unit conversions and
//! sanity checks, so they can be tested with values recorded from real devices.

use std::collections::HashSet;
use std::f64::consts::TAU;
use std::fmt;
use std::sync::{Arc, Once};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::{MemoryInfo, ProcessInfo, Utilization};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, System};
use tracing::{debug, info, warn};

pub use agentcom_types::fleet::{Disk, Gpu, GpuProcess, Resources};

/// The raw values of one device as NVML returns them; `None` is a metric that is absent.
#[derive(Clone, Debug, Default)]
struct GpuReading {
    name: Option<String>,
    uuid: Option<String>,
    utilization: Option<Utilization>,
    memory: Option<MemoryInfo>,
    /// Degrees Celsius.
    temperature: Option<u32>,
    /// Milliwatts.
    power_usage: Option<u32>,
    processes: Option<Vec<ProcessInfo>>,
}

/// Converts one raw NVML reading into a [`Gpu`]: percentages are clamped to 100, used
/// memory to the total, and per-process memory the driver cannot tell becomes `None`.
fn map_gpu(index: u32, reading: GpuReading) -> Gpu {
    let (memory_used_bytes, memory_total_bytes) = map_memory(reading.memory.as_ref());
    Gpu {
        index,
        name: reading.name.unwrap_or_default(),
        uuid: reading.uuid.unwrap_or_default(),
        utilization_percent: reading.utilization.as_ref().map(|u| u.gpu.min(100)),
        memory_utilization_percent: reading.utilization.as_ref().map(|u| u.memory.min(100)),
        memory_used_bytes,
        memory_total_bytes,
        temperature_celsius: reading.temperature,
        power_milliwatts: reading.power_usage,
        processes: reading.processes.unwrap_or_default().into_iter().map(map_process).collect(),
    }
}

/// (used, total); a device that reports no memory at all has neither.
fn map_memory(memory: Option<&MemoryInfo>) -> (Option<u64>, Option<u64>) {
    match memory {
        Some(m) if m.total > 0 => (Some(m.used.min(m.total)), Some(m.total)),
        _ => (None, None),
    }
}

fn map_process(process: ProcessInfo) -> GpuProcess {
    let used_memory_bytes = match process.used_gpu_memory {
        UsedGpuMemory::Used(bytes) => Some(bytes),
        UsedGpuMemory::Unavailable => None,
    };
    GpuProcess { pid: process.pid, used_memory_bytes }
}

/// Where the GPUs of a report come from.
enum GpuSource {
    /// NVML is loaded; devices are looked up on each poll.
    Nvml(Arc<Nvml>),
    /// NVML could not be initialised (no driver, no permission...): why.
    Absent(String),
    /// This many synthetic GPUs.
    Simulated(u32),
}

/// Takes resource readings of this machine. Keep one for the life of the sidecar: CPU usage
/// is computed from the difference between consecutive readings.
pub struct Sampler {
    /// `None` only where sysinfo does not support this platform.
    system: Option<System>,
    disks: Option<Disks>,
    gpus: GpuSource,
    rng: StdRng,
    /// When the CPU counters were first read, until the first sample has been taken.
    cpu_baseline: Option<Instant>,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gpus = match &self.gpus {
            GpuSource::Nvml(_) => "nvml".to_owned(),
            GpuSource::Absent(reason) => format!("absent ({reason})"),
            GpuSource::Simulated(n) => format!("{n} simulated"),
        };
        f.debug_struct("Sampler").field("gpus", &gpus).finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler reading this machine. With `simulate_gpus > 0` it reports that many
    /// synthetic GPUs and never loads NVML; otherwise NVML is initialised here, once.
    pub fn new(simulate_gpus: u32) -> Sampler {
        let mut system = System::new().map_err(|e| warn!("cannot read CPU and memory: {e}")).ok();
        if let Some(system) = &mut system {
            system.refresh_cpu_usage();
        }
        let disks = Disks::new().map_err(|e| warn!("cannot read disks: {e}")).ok();
        let gpus = if simulate_gpus > 0 { GpuSource::Simulated(simulate_gpus) } else { init_nvml() };
        Sampler { system, disks, gpus, rng: StdRng::seed_from_u64(rand::random()), cpu_baseline: Some(Instant::now()) }
    }

    /// Whether reports can carry GPUs: NVML is loaded, or GPUs are simulated.
    pub fn gpus_available(&self) -> bool {
        !matches!(self.gpus, GpuSource::Absent(_))
    }

    /// Why this machine has no GPUs (the NVML initialisation error), if NVML could not be loaded.
    pub fn no_gpu_reason(&self) -> Option<&str> {
        match &self.gpus {
            GpuSource::Absent(reason) => Some(reason),
            GpuSource::Nvml(_) | GpuSource::Simulated(_) => None,
        }
    }

    /// Takes one reading. The first call waits until CPU usage can be measured (at most
    /// [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] after [`Sampler::new`]).
    pub fn sample(&mut self) -> Resources {
        self.wait_for_cpu_baseline();
        let mut report = Resources { at_unix_ms: unix_ms(SystemTime::now()), ..Resources::default() };
        self.read_system(&mut report);
        report.disks = self.read_disks();
        match &self.gpus {
            GpuSource::Nvml(nvml) => report.gpus = read_nvml(nvml),
            GpuSource::Absent(_) => {}
            GpuSource::Simulated(count) => {
                report.gpus = (0..*count).map(|i| simulated_gpu(i, report.at_unix_ms, &mut self.rng)).collect();
                report.gpus_simulated = true;
            }
        }
        report
    }

    fn wait_for_cpu_baseline(&mut self) {
        if let Some(baseline) = self.cpu_baseline.take() {
            let left = sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.saturating_sub(baseline.elapsed());
            std::thread::sleep(left);
        }
    }

    fn read_system(&mut self, report: &mut Resources) {
        if let Some(system) = &mut self.system {
            system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
            system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            report.cpu_percent = f64::from(percent(system.global_cpu_usage()));
            report.cpu_per_core_percent = system.cpus().iter().map(|cpu| percent(cpu.usage())).collect();
            report.memory_total_bytes = system.total_memory();
            report.memory_available_bytes = system.available_memory().min(report.memory_total_bytes);
            report.memory_used_bytes = report.memory_total_bytes - report.memory_available_bytes;
        }
        match System::load_average() {
            Ok(load) => (report.load1, report.load5, report.load15) = (load.one, load.five, load.fifteen),
            Err(e) => debug!("cannot read the load average: {e}"),
        }
    }

    fn read_disks(&mut self) -> Vec<Disk> {
        let Some(disks) = &mut self.disks else { return Vec::new() };
        // Re-reads the mount table, so file systems mounted since the last call show up.
        disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        select_disks(disks.iter().map(|d| Mount {
            mount: d.mount_point().to_string_lossy().into_owned(),
            file_system: d.file_system().to_string_lossy().into_owned(),
            total_bytes: d.total_space(),
            available_bytes: d.available_space(),
        }))
    }
}

/// Loads NVML, or says why not. The first failure in this process is logged at info level.
fn init_nvml() -> GpuSource {
    static LOGGED: Once = Once::new();
    match Nvml::init() {
        Ok(nvml) => GpuSource::Nvml(Arc::new(nvml)),
        Err(e) => {
            let reason = e.to_string();
            LOGGED.call_once(|| info!("no NVIDIA GPU: {reason}"));
            GpuSource::Absent(reason)
        }
    }
}

/// Reads every device NVML knows; a device that cannot be opened is left out.
fn read_nvml(nvml: &Nvml) -> Vec<Gpu> {
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(e) => {
            debug!("NVML device count failed: {e}");
            return Vec::new();
        }
    };
    (0..count).filter_map(|index| read_device(nvml, index).map(|reading| map_gpu(index, reading))).collect()
}

fn read_device(nvml: &Nvml, index: u32) -> Option<GpuReading> {
    let device =
        nvml.device_by_index(index).map_err(|e| debug!(gpu = index, "NVML cannot open the device: {e}")).ok()?;
    Some(GpuReading {
        name: metric(index, "name", device.name()),
        uuid: metric(index, "uuid", device.uuid()),
        utilization: metric(index, "utilization", device.utilization_rates()),
        memory: metric(index, "memory", device.memory_info()),
        temperature: metric(index, "temperature", device.temperature(TemperatureSensor::Gpu)),
        power_usage: metric(index, "power", device.power_usage()),
        processes: metric(index, "processes", device.running_compute_processes()),
    })
}

/// One NVML metric: `NotSupported` is an absent metric, any other error is logged at debug.
fn metric<T>(index: u32, what: &str, result: Result<T, NvmlError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(NvmlError::NotSupported) => None,
        Err(e) => {
            debug!(gpu = index, metric = what, "NVML query failed: {e}");
            None
        }
    }
}

/// One mounted file system as the mount table lists it.
struct Mount {
    mount: String,
    file_system: String,
    total_bytes: u64,
    available_bytes: u64,
}

/// File systems that hold no user data. `overlay` is kept: it is `/` in a container.
const PSEUDO_FILE_SYSTEMS: &[&str] = &["tmpfs", "devtmpfs", "proc", "sysfs", "squashfs", "ramfs", "devpts"];

/// Real file systems with space, one per mount point (the first listed wins), by mount point.
fn select_disks(mounts: impl IntoIterator<Item = Mount>) -> Vec<Disk> {
    let mut seen = HashSet::new();
    let mut disks: Vec<Disk> = mounts
        .into_iter()
        .filter(|m| m.total_bytes > 0 && !PSEUDO_FILE_SYSTEMS.contains(&m.file_system.as_str()))
        .filter(|m| seen.insert(m.mount.clone()))
        .map(|m| Disk {
            mount: m.mount,
            total_bytes: m.total_bytes,
            available_bytes: m.available_bytes.min(m.total_bytes),
        })
        .collect();
    disks.sort_by(|a, b| a.mount.cmp(&b.mount));
    disks
}

/// A CPU percentage as sysinfo gives it, forced into 0..=100.
fn percent(value: f32) -> f32 {
    if value.is_finite() { value.clamp(0.0, 100.0) } else { 0.0 }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_millis()).ok()).unwrap_or(0)
}

const GIB: u64 = 1024 * 1024 * 1024;
const SIMULATED_MEMORY_BYTES: u64 = 24 * GIB;

/// A synthetic GPU at `time_ms`: obviously named, with values that drift smoothly (slow sine
/// waves, one per GPU, plus a little noise from `rng`).
fn simulated_gpu(index: u32, time_ms: i64, rng: &mut impl Rng) -> Gpu {
    map_gpu(index, simulated_reading(index, time_ms, rng))
}

/// Raw values of a synthetic GPU, as NVML would report them. Utilization follows a 5-minute
/// sine; temperature (35-80 C) and power (60-350 W) follow utilization; memory used drifts
/// between 20 % and 70 % of 24 GiB on a 15-minute sine; one process, two when busy.
fn simulated_reading(index: u32, time_ms: i64, rng: &mut impl Rng) -> GpuReading {
    let seconds = time_ms as f64 / 1000.0;
    let phase = f64::from(index) * 1.9;
    let wave = (seconds * TAU / 300.0 + phase).sin();
    let busy = ((55.0 + 40.0 * wave + rng.random_range(-4.0..=4.0)) / 100.0).clamp(0.0, 1.0);
    let memory_share = 0.45 + 0.25 * (seconds * TAU / 900.0 + phase).sin();
    let used = ((SIMULATED_MEMORY_BYTES as f64 * memory_share) as u64)
        .clamp(SIMULATED_MEMORY_BYTES / 5, SIMULATED_MEMORY_BYTES / 10 * 7);
    let temperature = (35.0 + 45.0 * busy + rng.random_range(-1.0..=1.0)).clamp(35.0, 80.0);
    let power_watts = (60.0 + 290.0 * busy + rng.random_range(-5.0..=5.0)).clamp(60.0, 350.0);
    GpuReading {
        name: Some(format!("Simulated GPU {index}")),
        uuid: Some(format!("GPU-sim-{index:08x}-0000-0000-0000")),
        utilization: Some(Utilization { gpu: (busy * 100.0).round() as u32, memory: (busy * 60.0).round() as u32 }),
        memory: Some(MemoryInfo {
            free: SIMULATED_MEMORY_BYTES - used,
            reserved: 0,
            total: SIMULATED_MEMORY_BYTES,
            used,
            version: 2,
        }),
        temperature: Some(temperature.round() as u32),
        power_usage: Some((power_watts * 1000.0).round() as u32),
        processes: Some(simulated_processes(index, used, busy > 0.5)),
    }
}

/// One fake process holding most of the used memory, or two splitting it when `busy`.
fn simulated_processes(index: u32, used: u64, busy: bool) -> Vec<ProcessInfo> {
    let held = used / 10 * 9;
    let shares = if busy { vec![held / 3 * 2, held / 3] } else { vec![held] };
    shares
        .into_iter()
        .zip(0u32..)
        .map(|(bytes, k)| ProcessInfo {
            pid: 900_000 + index * 10 + k,
            used_gpu_memory: UsedGpuMemory::Used(bytes),
            gpu_instance_id: None,
            compute_instance_id: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, used_gpu_memory: UsedGpuMemory) -> ProcessInfo {
        ProcessInfo { pid, used_gpu_memory, gpu_instance_id: None, compute_instance_id: None }
    }

    /// An H100 SXM under a training job, as NVML (driver 550) reports it.
    fn h100_reading() -> GpuReading {
        GpuReading {
            name: Some("NVIDIA H100 80GB HBM3".into()),
            uuid: Some("GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901".into()),
            utilization: Some(Utilization { gpu: 97, memory: 63 }),
            memory: Some(MemoryInfo {
                free: 4_735_041_536,
                reserved: 556_269_568,
                total: 85_520_809_984,
                used: 80_229_498_880,
                version: 0x0200_0028,
            }),
            temperature: Some(34),
            power_usage: Some(71_234),
            processes: Some(vec![
                process(48_213, UsedGpuMemory::Used(4_294_967_296)),
                process(48_214, UsedGpuMemory::Used(75_497_472_000)),
            ]),
        }
    }

    #[test]
    fn map_gpu_converts_an_h100_reading() {
        let gpu = map_gpu(0, h100_reading());
        assert_eq!(
            gpu,
            Gpu {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: "GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901".into(),
                utilization_percent: Some(97),
                memory_utilization_percent: Some(63),
                memory_used_bytes: Some(80_229_498_880),
                memory_total_bytes: Some(85_520_809_984),
                temperature_celsius: Some(34),
                power_milliwatts: Some(71_234),
                processes: vec![
                    GpuProcess { pid: 48_213, used_memory_bytes: Some(4_294_967_296) },
                    GpuProcess { pid: 48_214, used_memory_bytes: Some(75_497_472_000) },
                ],
            }
        );
    }

    /// An RTX 4090 driving a desktop: per-process memory is not accounted (NVML's
    /// NVML_VALUE_NOT_AVAILABLE) and, on this board, power readings are not supported.
    #[test]
    fn map_gpu_turns_unsupported_rtx_4090_metrics_into_none() {
        let reading = GpuReading {
            name: Some("NVIDIA GeForce RTX 4090".into()),
            uuid: Some("GPU-8f3e2a71-0c4d-5b9e-a612-3d7f90e4c5b8".into()),
            utilization: Some(Utilization { gpu: 3, memory: 1 }),
            memory: Some(MemoryInfo {
                free: 23_604_887_552,
                reserved: 346_292_224,
                total: 25_757_220_864,
                used: 1_806_041_088,
                version: 0x0200_0028,
            }),
            temperature: Some(41),
            power_usage: None,
            processes: Some(vec![process(2_731, UsedGpuMemory::Unavailable)]),
        };
        assert_eq!(
            map_gpu(1, reading),
            Gpu {
                index: 1,
                name: "NVIDIA GeForce RTX 4090".into(),
                uuid: "GPU-8f3e2a71-0c4d-5b9e-a612-3d7f90e4c5b8".into(),
                utilization_percent: Some(3),
                memory_utilization_percent: Some(1),
                memory_used_bytes: Some(1_806_041_088),
                memory_total_bytes: Some(25_757_220_864),
                temperature_celsius: Some(41),
                power_milliwatts: None,
                processes: vec![GpuProcess { pid: 2_731, used_memory_bytes: None }],
            }
        );
    }

    #[test]
    fn map_gpu_keeps_the_index_and_leaves_absent_metrics_absent() {
        let gpu = map_gpu(7, GpuReading::default());
        assert_eq!(gpu, Gpu { index: 7, ..Gpu::default() });
    }

    #[test]
    fn map_gpu_clamps_out_of_range_values() {
        let reading = GpuReading {
            utilization: Some(Utilization { gpu: 250, memory: 101 }),
            memory: Some(MemoryInfo { free: 0, reserved: 0, total: 1_000, used: 5_000, version: 0 }),
            ..h100_reading()
        };
        let gpu = map_gpu(0, reading);
        assert_eq!((gpu.utilization_percent, gpu.memory_utilization_percent), (Some(100), Some(100)));
        assert_eq!((gpu.memory_used_bytes, gpu.memory_total_bytes), (Some(1_000), Some(1_000)));
    }

    #[test]
    fn map_gpu_drops_memory_when_the_device_reports_none() {
        let reading = GpuReading {
            memory: Some(MemoryInfo { free: 0, reserved: 0, total: 0, used: 0, version: 0 }),
            ..h100_reading()
        };
        let gpu = map_gpu(0, reading);
        assert_eq!((gpu.memory_used_bytes, gpu.memory_total_bytes), (None, None));
    }

    #[test]
    fn metric_maps_not_supported_and_other_errors_to_none() {
        assert_eq!(metric(0, "power", Ok::<u32, NvmlError>(5)), Some(5));
        assert_eq!(metric::<u32>(0, "power", Err(NvmlError::NotSupported)), None);
        assert_eq!(metric::<u32>(0, "power", Err(NvmlError::GpuLost)), None);
    }

    fn mount(mount: &str, file_system: &str, total_bytes: u64, available_bytes: u64) -> Mount {
        Mount { mount: mount.into(), file_system: file_system.into(), total_bytes, available_bytes }
    }

    #[test]
    fn select_disks_keeps_real_file_systems_once_per_mount() {
        let disks = select_disks([
            mount("/", "overlay", 100 * GIB, 40 * GIB),
            mount("/dev/shm", "tmpfs", 64 * GIB, 64 * GIB),
            mount("/dev", "devtmpfs", 8 * GIB, 8 * GIB),
            mount("/snap/core/1", "squashfs", GIB, 0),
            mount("/data", "ext4", 2_000 * GIB, 1_500 * GIB),
            mount("/data", "ext4", 2_000 * GIB, 1_400 * GIB),
            mount("/boot/efi", "vfat", 512 * 1024 * 1024, 500 * 1024 * 1024),
            mount("/mnt/empty", "xfs", 0, 0),
        ]);
        assert_eq!(
            disks,
            vec![
                Disk { mount: "/".into(), total_bytes: 100 * GIB, available_bytes: 40 * GIB },
                Disk { mount: "/boot/efi".into(), total_bytes: 512 * 1024 * 1024, available_bytes: 500 * 1024 * 1024 },
                Disk { mount: "/data".into(), total_bytes: 2_000 * GIB, available_bytes: 1_500 * GIB },
            ]
        );
    }

    #[test]
    fn percent_forces_cpu_values_into_range() {
        assert_eq!(percent(42.5), 42.5);
        assert_eq!(percent(100.3), 100.0);
        assert_eq!(percent(-0.1), 0.0);
        assert_eq!(percent(f32::NAN), 0.0);
    }

    #[test]
    fn simulated_gpus_stay_plausible_over_a_day() {
        let mut rng = StdRng::seed_from_u64(7);
        let start = 1_750_000_000_000_i64;
        for index in 0..4 {
            for step in 0..8_640 {
                let gpu = simulated_gpu(index, start + step * 10_000, &mut rng);
                assert_eq!(gpu.name, format!("Simulated GPU {index}"));
                assert!(gpu.uuid.starts_with("GPU-sim-"), "{}", gpu.uuid);
                assert!(gpu.utilization_percent.is_some_and(|u| u <= 100), "{gpu:?}");
                assert!(gpu.memory_utilization_percent.is_some_and(|u| u <= 60), "{gpu:?}");
                assert_eq!(gpu.memory_total_bytes, Some(24 * GIB));
                let used = gpu.memory_used_bytes.unwrap_or_default();
                assert!((24 * GIB / 5..=24 * GIB / 10 * 7).contains(&used), "{gpu:?}");
                assert!(gpu.temperature_celsius.is_some_and(|t| (35..=80).contains(&t)), "{gpu:?}");
                assert!(gpu.power_milliwatts.is_some_and(|p| (60_000..=350_000).contains(&p)), "{gpu:?}");
                assert!((1..=2).contains(&gpu.processes.len()), "{gpu:?}");
                let held: u64 = gpu.processes.iter().filter_map(|p| p.used_memory_bytes).sum();
                assert!(held <= used, "{gpu:?}");
            }
        }
    }

    #[test]
    fn simulated_gpus_move_smoothly_and_follow_utilization() {
        let mut rng = StdRng::seed_from_u64(11);
        let start = 1_750_000_000_000_i64;
        let gpus: Vec<Gpu> = (0..3_600).map(|s| simulated_gpu(0, start + s * 1_000, &mut rng)).collect();
        let utilization = |g: &Gpu| i64::from(g.utilization_percent.unwrap_or_default());
        for pair in gpus.windows(2) {
            assert!((utilization(&pair[0]) - utilization(&pair[1])).abs() <= 10, "{pair:?}");
        }
        // Over an hour the 5-minute wave goes through both busy and idle stretches.
        assert!(gpus.iter().any(|g| utilization(g) >= 85) && gpus.iter().any(|g| utilization(g) <= 25));
        let hot = gpus.iter().filter(|g| utilization(g) >= 85);
        let cool = gpus.iter().filter(|g| utilization(g) <= 25);
        let hottest_idle = cool.filter_map(|g| g.temperature_celsius).max().unwrap_or_default();
        let coolest_busy = hot.filter_map(|g| g.temperature_celsius).min().unwrap_or_default();
        assert!(coolest_busy > hottest_idle, "busy {coolest_busy} C vs idle {hottest_idle} C");
    }

    #[test]
    fn simulated_gpus_differ_from_each_other() {
        let mut rng = StdRng::seed_from_u64(3);
        let a = simulated_gpu(0, 1_750_000_000_000, &mut rng);
        let b = simulated_gpu(1, 1_750_000_000_000, &mut rng);
        assert_ne!(a.uuid, b.uuid);
        assert_ne!(a.memory_used_bytes, b.memory_used_bytes);
    }

    #[test]
    fn sampler_reads_this_machine() {
        let mut sampler = Sampler::new(0);
        let first = sampler.sample();
        assert!(!first.gpus_simulated);
        if sampler.no_gpu_reason().is_some() {
            // A machine without the NVIDIA driver (as in CI): no GPUs, and no crash.
            assert!(!sampler.gpus_available());
            assert!(first.gpus.is_empty(), "{:?}", first.gpus);
        }
        assert!(first.memory_total_bytes > 0);
        assert!(first.memory_used_bytes + first.memory_available_bytes == first.memory_total_bytes);
        assert!(!first.cpu_per_core_percent.is_empty());
        assert!(first.at_unix_ms > 1_700_000_000_000);
        assert!(first.load1 >= 0.0);
        for disk in &first.disks {
            assert!(disk.total_bytes > 0 && disk.available_bytes <= disk.total_bytes, "{disk:?}");
        }

        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let second = sampler.sample();
        assert!((0.0..=100.0).contains(&second.cpu_percent), "{}", second.cpu_percent);
        assert!(second.cpu_per_core_percent.iter().all(|p| (0.0..=100.0).contains(p)));
        assert_eq!(second.cpu_per_core_percent.len(), first.cpu_per_core_percent.len());
        assert!(second.at_unix_ms >= first.at_unix_ms);
    }

    #[test]
    fn sampler_simulates_gpus_without_nvml() {
        let mut sampler = Sampler::new(2);
        assert!(sampler.gpus_available());
        assert_eq!(sampler.no_gpu_reason(), None);
        let report = sampler.sample();
        assert!(report.gpus_simulated);
        assert_eq!(report.gpus.iter().map(|g| g.index).collect::<Vec<_>>(), vec![0, 1]);
        assert!(report.gpus.iter().all(|g| g.name.starts_with("Simulated GPU")));
    }

    #[test]
    fn sampler_can_move_to_a_blocking_thread() {
        fn is_send<T: Send>() {}
        is_send::<Sampler>();
    }
}
