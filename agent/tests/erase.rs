//! `erase` leaves nothing readable behind: a real agent keeps its state on an ext4 file
//! system in a loop image, deploys an encrypted model, answers an `infer` command (whose
//! outputs go through the acks outbox on disk), and is erased; the raw image is then
//! searched for the model key and the infer output. Needs root (mount); skipped otherwise.

mod daemon;
mod operator;

use std::path::{Path, PathBuf};
use std::process::Command;

use daemon::{setup, Agent};
use edge_proto::command::{NpyBytes, Payload, Reply};
use edgectl::link::Link;
use edgectl::track::Outcome;
use operator::{command, deploy_model, device, models_dir, only, operator_mqtt, ota_config, ready};

const EMBED: &str = "pyopen-wakeword__embedding_model";

/// An ext4 file system in an image file, mounted on a loop device; unmounted on drop.
struct LoopImage {
    image: PathBuf,
    mount: PathBuf,
    mounted: bool,
}

impl LoopImage {
    fn make(dir: &Path, bytes: u64) -> Option<LoopImage> {
        let image = dir.join("state.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::File::create(&image).unwrap().set_len(bytes).unwrap();
        let run = |cmd: &mut Command| {
            cmd.output().map(|o| (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned()))
        };
        match run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)) {
            Ok((true, _)) => {}
            other => {
                eprintln!("skipped: mkfs.ext4: {other:?}");
                return None;
            }
        }
        match run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount)) {
            Ok((true, _)) => Some(LoopImage { image, mount, mounted: true }),
            other => {
                // Only root may mount; CI runs as root.
                assert!(unsafe { libc::geteuid() } != 0, "root could not mount a loop image: {other:?}");
                eprintln!("skipped: cannot mount a loop image (not root): {other:?}");
                None
            }
        }
    }

    /// Unmounts (flushing everything to the image) and returns the image's bytes.
    fn unmount_and_read(&mut self) -> Vec<u8> {
        let out = Command::new("umount").arg(&self.mount).output().unwrap();
        assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
        self.mounted = false;
        std::fs::read(&self.image).unwrap()
    }
}

impl Drop for LoopImage {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The data of an .npy file: what follows its header.
fn npy_data(npy: &[u8]) -> &[u8] {
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    &npy[10 + header_len..]
}

#[tokio::test(flavor = "multi_thread")]
async fn after_erase_the_image_holds_neither_the_model_key_nor_an_infer_output() {
    let s = setup();
    let Some(mut image) = LoopImage::make(s.dir.path(), 64 << 20) else { return };
    let state = image.mount.join("state");
    let (config, http) = ota_config(&s, "dev-1", &[], "encrypt_models = true", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let default_state = s.dir.path().join("state-dev-1");
    std::fs::write(&config, text.replace(default_state.to_str().unwrap(), state.to_str().unwrap())).unwrap();
    let agent = Agent::start(&config, &http);
    ready(&agent).await;
    let mut link = Link::connect(&operator_mqtt(&s)).await.unwrap();

    let out = deploy_model(&mut link, device("dev-1"), "embed", "1", EMBED, None).await;
    assert_eq!(only(&out), &Outcome::Succeeded, "{out:?}");
    let key = std::fs::read(state.join("model.key")).unwrap();
    assert_eq!(key.len(), 32);
    let input = std::fs::read(models_dir().join(format!("{EMBED}.input.npy"))).unwrap();
    let res =
        command(&mut link, device("dev-1"), Payload::Infer { model: "embed".into(), inputs: vec![NpyBytes(input)] })
            .await;
    let Some(Reply::Outputs(outputs)) = &res[0].reply else { panic!("{res:?}") };
    // The first 64 bytes of the output's data (16 floats) stand for it.
    let output = npy_data(&outputs[0].0)[..64].to_vec();
    assert!(output.iter().filter(|&&b| b != 0).count() > 32, "a distinctive output: {output:?}");

    // Before: both are on the file system (so the search below can find them).
    let _ = Command::new("sync").status();
    let before = std::fs::read(&image.image).unwrap();
    assert!(contains(&before, &key), "the model key is not in the image before the erase");
    assert!(contains(&before, &output), "the infer output is not in the image before the erase (acks outbox)");
    drop(before);

    let erased = command(&mut link, device("dev-1"), Payload::Erase).await;
    assert_eq!(erased[0].outcome, Outcome::Succeeded, "{erased:?}");
    link.close().await;
    let log = agent.stop();
    assert!(log.contains("destroying the model key"), "{log}");

    let after = image.unmount_and_read();
    assert!(!contains(&after, &key), "the model key survived the erase in the image");
    assert!(!contains(&after, &output), "an infer output survived the erase in the image");
}
