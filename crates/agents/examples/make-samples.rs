//! Writes the sample inputs of seed 000's use cases into a directory:
//! `cargo run -p baton-agents --example make-samples -- <dir>` (default `samples`).
//! See `baton_agents::samples` for what each file holds.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "samples".into()));
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in baton_agents::samples::files() {
        let path = dir.join(name);
        std::fs::write(&path, &bytes)?;
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}
