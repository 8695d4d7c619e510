//! Sending signals: the config's [`Signal`] (the vocabulary: a name and a Linux
//! number) becomes `nix`'s at the syscall, and nowhere else.

pub use appvisor_config::Signal;
use nix::sys::signal as sys;

use crate::procfs::Pid;

/// `nix`'s signal for `sig`. Every signal of the config's table is a standard Linux
/// signal (1–31), all of which `nix` names, so this cannot fail for one of them.
pub fn to_nix(sig: Signal) -> Option<sys::Signal> {
    sys::Signal::try_from(sig.number).ok()
}

/// Sends `sig` to process `pid`.
pub fn send(pid: Pid, sig: Signal) -> nix::Result<()> {
    let sig = to_nix(sig).ok_or(nix::errno::Errno::EINVAL)?;
    sys::kill(pid, sig)
}

/// SIGKILL to every process of group `pgid` (a worker and whatever it started).
pub fn kill_group(pgid: Pid) -> nix::Result<()> {
    sys::killpg(pgid, sys::Signal::SIGKILL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_of_the_table_converts() {
        for number in 1..=31 {
            let sig = Signal::of_number(number).expect("1–31 are all named");
            let nix_sig = to_nix(sig).unwrap_or_else(|| panic!("{} has no nix signal", sig.name));
            assert_eq!(nix_sig as i32, number);
            assert_eq!(nix_sig.as_str(), sig.name);
        }
    }

    #[test]
    fn sends_to_a_process_and_a_group() {
        use std::os::unix::process::CommandExt;
        let mut hup_default = std::process::Command::new("sleep");
        hup_default.arg("30").process_group(0);
        // SAFETY: between fork and exec the closure only calls sigaction(2), which is
        // async-signal-safe. The test may run under `nohup` (SIGHUP ignored, and the
        // disposition inherited), as workers may: the spawner resets it for them too.
        unsafe {
            hup_default.pre_exec(|| {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGHUP,
                    nix::sys::signal::SigHandler::SigDfl,
                )
                .map(drop)
                .map_err(std::io::Error::from)
            });
        }
        let mut child = hup_default.spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        send(pid, Signal::HUP).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(1));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        kill_group(Pid::from_raw(child.id() as i32)).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(9));
    }
}
