//! Output into a pipe whose reader has gone.

/// `hubctl list | head -3`: once the reader has gone, printing more fails; the rest of the
/// output has nowhere to go, so hubctl stops there, quietly and successfully, as `ls` and `cat`
/// do, rather than panicking with a backtrace.
pub(crate) fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
