//! CPU time of the current process, all its threads.

/// User plus system CPU seconds of this process so far (`utime` and
/// `stime` of `/proc/self/stat`, in the kernel's fixed 100 ticks a second);
/// `None` where the kernel does not report them.
pub fn cpu_secs() -> Option<f64> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in seconds.
fn parse_stat(stat: &str) -> Option<f64> {
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let ticks = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks() {
        let stat = "4242 (orch (worker)) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 100 1000 200";
        assert_eq!(parse_stat(stat), Some(3.25));
        assert_eq!(parse_stat("garbage"), None);
    }
}
