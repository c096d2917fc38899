//! `thinagent-scanner`: the host scanner service.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("thinagent-scanner: the service is being built (issue 3); nothing to run yet")
}
