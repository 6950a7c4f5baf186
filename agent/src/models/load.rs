//! Loading a model from where it comes from: a `[[models]]` entry of the configuration file,
//! or a version in the store (deployed over the air). The engine knows neither: this is
//! where configuration and manifests become [`LoadOptions`].

use edge_proto::ota::{Manifest, ModelFormat};

use crate::config::ModelConfig;
use crate::engine::{declared_inputs, options_for_bytes, scalar_pin, EngineError, Format, LoadOptions, Model};
use crate::serving::PoolSettings;
use crate::store::Store;

/// The engine's name for a manifest's format.
pub fn engine_format(format: ModelFormat) -> Format {
    match format {
        ModelFormat::Tflite => Format::Tflite,
        ModelFormat::Onnx => Format::Onnx,
    }
}

/// Load options for a model entry of the configuration.
pub fn options_for(model: &ModelConfig) -> Result<LoadOptions, EngineError> {
    let declared = if model.pins.is_empty() { vec![] } else { declared_inputs(&model.path)? };
    let pins = model
        .pins
        .iter()
        .map(|(name, v)| Ok((name.clone(), scalar_pin(&declared, name, *v)?)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(LoadOptions {
        threads: model.threads,
        pins,
        state: model.state.iter().map(|(i, o)| (i.clone(), o.clone())).collect(),
        shapes: model.shapes.iter().map(|(n, s)| (n.clone(), s.clone())).collect(),
    })
}

/// The file a configuration entry names.
pub fn configured(m: &ModelConfig) -> Result<Model, EngineError> {
    options_for(m).and_then(|o| Model::load(&m.path, &o))
}

/// A model that arrived over the air, from its manifest and bytes (the validation child
/// loads it this way too).
pub fn from_manifest(manifest: &Manifest, bytes: &[u8]) -> Result<Model, EngineError> {
    let format = engine_format(manifest.format);
    options_for_bytes(format, bytes, &manifest.pins).and_then(|o| Model::load_bytes(format, bytes, &o))
}

/// `version` of `name` from the store, checked against its manifest's hash.
pub fn installed(store: &Store, name: &str, version: &str) -> Result<Model, String> {
    let (manifest, bytes) = store.read(name, version).map_err(|e| e.to_string())?;
    from_manifest(&manifest, &bytes).map_err(|e| format!("{name} {version} does not load: {e}"))
}

/// Worker settings for `name`: its configuration entry's, or the defaults.
pub fn pool_settings(config: &[ModelConfig], name: &str) -> PoolSettings {
    config
        .iter()
        .find(|m| m.name == name)
        .map(|m| PoolSettings { workers: m.workers, queue: m.queue })
        .unwrap_or_default()
}
