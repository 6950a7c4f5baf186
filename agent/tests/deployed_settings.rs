//! A version deployed over the air runs with the device's settings for that model: the
//! `[[models]]` entry of the same name gives its input shapes, state bindings and threads,
//! without which silero-vad (its `If` branches hang on the input's shape) does not load.
//! A real agent, a real Mosquitto, edgectl's library as the operator, the real model.

mod daemon;
mod operator;

use daemon::{setup, Agent};
use edgectl::link::Link;
use edgectl::track::Outcome;
use operator::*;

const SILERO: &str = "silero-vad__silero_vad_16k_op15.onnx";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_version_loads_with_the_configured_shapes_of_its_name() {
    let s = setup();
    let entry = format!(
        "[[models]]\nname = \"vad\"\npath = \"{}\"\npins = {{ sr = 16000 }}\n\
         shapes = {{ input = [1, 576] }}\nstate = {{ state = \"stateN\" }}\n",
        models_dir().join(SILERO).display()
    );
    let (config, http) = ota_config(&s, "dev-1", &[], "", &entry);
    let agent = Agent::start(&config, &http);
    ready(&agent).await;
    let mut link = Link::connect(&operator_mqtt(&s)).await.unwrap();
    let deploy_as = |name: &str, version: &str| {
        let mut req = request(device("dev-1"), name, version, SILERO, None);
        req.pins = vec![("sr".into(), 16000.0)];
        req
    };

    // Under the configured name: validated and installed with the entry's shapes and state.
    let v2 = run_deploy(&mut link, &deploy_as("vad", "2")).await;
    assert_eq!(only(&v2), &Outcome::Succeeded, "{v2:?}\n{}", agent.stop());
    assert_eq!(active(&status(&mut link, "dev-1").await, "vad").as_deref(), Some("2"));

    // Under a name the device has no entry for, the same file has no shapes and is refused
    // at validation, saying why; what serves is untouched.
    let other = run_deploy(&mut link, &deploy_as("vad-unconfigured", "1")).await;
    assert!(
        matches!(only(&other), Outcome::Failed(r) if r.contains("does not load") && r.contains("input shapes")),
        "{other:?}"
    );
    assert_eq!(active(&status(&mut link, "dev-1").await, "vad").as_deref(), Some("2"));
    link.close().await;
}
