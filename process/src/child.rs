//! A child process tied to this one, for a binary that runs another beside it (`agentcom-hub
//! dev` and its local sidecar).

use std::os::unix::process::CommandExt;

/// Makes `command` start a child tied to this process: in a process group of its own, so a
/// Ctrl-C at the terminal reaches this process only (which then stops the child in its own
/// order), and killed with SIGKILL when this process dies, however it dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child ends: spawn from a thread
/// that lives as long as the process (the main thread), never from a blocking-pool thread.
pub fn tie_to_this_process(command: &mut std::process::Command) {
    let parent = std::process::id();
    command.process_group(0);
    #[allow(unsafe_code)] // Sound: only prctl and getppid run between fork and exec.
    // SAFETY: both are async-signal-safe system calls that touch no memory the parent shares.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // This process may have died between fork and prctl: then no signal would come.
            if nix::unistd::getppid().as_raw().unsigned_abs() != parent {
                return Err(std::io::Error::other("the parent process is gone"));
            }
            Ok(())
        });
    }
}
