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

/// What a version deployed over the air takes from the device's `[[models]]` entry of the
/// same name, when there is one: matmul threads, input shapes and state bindings. They
/// describe how this device runs the model (a detector's input size, a recurrent model's
/// state), which a new version keeps; its pins come with its manifest. Without them a
/// model whose dimensions tract cannot settle alone would never load over the air.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub threads: usize,
    pub shapes: Vec<(String, Vec<usize>)>,
    pub state: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Settings {
        let o = LoadOptions::default();
        Settings { threads: o.threads, shapes: o.shapes, state: o.state }
    }
}

impl Settings {
    /// The settings of `name`'s entry in `config`, or the engine's defaults.
    pub fn of(config: &[ModelConfig], name: &str) -> Settings {
        config.iter().find(|m| m.name == name).map_or_else(Settings::default, |m| Settings {
            threads: m.threads,
            shapes: m.shapes.iter().map(|(n, s)| (n.clone(), s.clone())).collect(),
            state: m.state.iter().map(|(i, o)| (i.clone(), o.clone())).collect(),
        })
    }
}

/// A model that arrived over the air, from its manifest and bytes, with the device's
/// `settings` for it (the validation child loads it this way too).
pub fn from_manifest(manifest: &Manifest, bytes: &[u8], settings: &Settings) -> Result<Model, EngineError> {
    let format = engine_format(manifest.format);
    let options = options_for_bytes(format, bytes, &manifest.pins)?;
    let options = LoadOptions {
        threads: settings.threads,
        shapes: settings.shapes.clone(),
        state: settings.state.clone(),
        ..options
    };
    Model::load_bytes(format, bytes, &options)
}

/// `version` of `name` from the store, checked against its manifest's hash, with the
/// device's `settings` for it.
pub fn installed(store: &Store, name: &str, version: &str, settings: &Settings) -> Result<Model, String> {
    let (manifest, bytes) = store.read(name, version).map_err(|e| e.to_string())?;
    from_manifest(&manifest, &bytes, settings).map_err(|e| format!("{name} {version} does not load: {e}"))
}

/// Worker settings for `name`: its configuration entry's, or the defaults.
pub fn pool_settings(config: &[ModelConfig], name: &str) -> PoolSettings {
    config
        .iter()
        .find(|m| m.name == name)
        .map(|m| PoolSettings { workers: m.workers, queue: m.queue })
        .unwrap_or_default()
}
