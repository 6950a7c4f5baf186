//! Malformed model files give an error, never a panic or an abort, and never an allocation
//! of what a header merely declares.

mod common;
mod onnx_build;

use common::models_dir;
use edge_agent::engine::{EngineError, Format, LoadOptions, Model};
use tract_tflite::tflite as tfl;

fn load(format: Format, bytes: &[u8]) -> Result<Model, EngineError> {
    Model::load_bytes(format, bytes, &LoadOptions::default())
}

/// Bytes that look random but are the same on every run.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn zero_byte_files_are_errors() {
    for format in [Format::Onnx, Format::Tflite, Format::Nnef] {
        assert!(load(format, &[]).is_err(), "{format:?}");
    }
}

#[test]
fn random_bytes_are_errors() {
    for format in [Format::Onnx, Format::Tflite, Format::Nnef] {
        for len in [1, 7, 64, 4096, 100_000] {
            assert!(load(format, &noise(len)).is_err(), "{format:?} {len}");
        }
    }
    // Random bytes behind a valid TFLite identifier.
    let mut fake = noise(4096);
    fake[4..8].copy_from_slice(b"TFL3");
    assert!(load(Format::Tflite, &fake).is_err());
}

#[test]
fn truncated_models_are_errors() {
    for (file, format) in [
        ("mediapipe__hand_recrop.tflite", Format::Tflite),
        ("pymicro-wakeword__okay_nabu.tflite", Format::Tflite),
        ("openwakeword-js__hello_deepa.onnx", Format::Onnx),
        ("silero-vad__silero_vad_16k_op15.onnx", Format::Onnx),
    ] {
        let bytes = std::fs::read(models_dir().join(file)).unwrap();
        for cut in [bytes.len() / 10, bytes.len() / 2, bytes.len() - 16] {
            let result = load(format, &bytes[..cut]);
            assert!(result.is_err(), "{file} cut at {cut} loaded");
        }
    }
}

/// A TFLite model whose only constant declares 2^40 floats (4 TiB) over 16 bytes.
fn tflite_with_huge_tensor() -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let empty = tfl::Buffer::create(&mut fbb, &tfl::BufferArgs { data: None });
    let data = fbb.create_vector(&[0u8; 16]);
    let weights = tfl::Buffer::create(&mut fbb, &tfl::BufferArgs { data: Some(data) });
    let tensor = |fbb: &mut flatbuffers::FlatBufferBuilder<'static>, name: &str, shape: &[i32], buffer: u32| {
        let shape = fbb.create_vector(shape);
        let name = fbb.create_string(name);
        tfl::Tensor::create(
            fbb,
            &tfl::TensorArgs {
                shape: Some(shape),
                type_: tfl::TensorType::FLOAT32,
                buffer,
                name: Some(name),
                ..Default::default()
            },
        )
    };
    let input = tensor(&mut fbb, "input", &[1, 1], 0);
    let huge = tensor(&mut fbb, "huge", &[1 << 20, 1 << 20], 1);
    let output = tensor(&mut fbb, "output", &[1 << 20, 1 << 20], 0);
    let tensors = fbb.create_vector(&[input, huge, output]);
    let ins = fbb.create_vector(&[0, 1]);
    let outs = fbb.create_vector(&[2]);
    let options = tfl::AddOptions::create(&mut fbb, &tfl::AddOptionsArgs::default());
    let op = tfl::Operator::create(
        &mut fbb,
        &tfl::OperatorArgs {
            opcode_index: 0,
            inputs: Some(ins),
            outputs: Some(outs),
            builtin_options_type: tfl::BuiltinOptions::AddOptions,
            builtin_options: Some(options.as_union_value()),
            ..Default::default()
        },
    );
    let operators = fbb.create_vector(&[op]);
    let sg_in = fbb.create_vector(&[0]);
    let sg_out = fbb.create_vector(&[2]);
    let sg = tfl::SubGraph::create(
        &mut fbb,
        &tfl::SubGraphArgs {
            tensors: Some(tensors),
            inputs: Some(sg_in),
            outputs: Some(sg_out),
            operators: Some(operators),
            ..Default::default()
        },
    );
    let subgraphs = fbb.create_vector(&[sg]);
    let code = tfl::OperatorCode::create(
        &mut fbb,
        &tfl::OperatorCodeArgs {
            deprecated_builtin_code: 0,
            builtin_code: tfl::BuiltinOperator::ADD,
            version: 1,
            ..Default::default()
        },
    );
    let codes = fbb.create_vector(&[code]);
    let buffers = fbb.create_vector(&[empty, weights]);
    let model = tfl::Model::create(
        &mut fbb,
        &tfl::ModelArgs {
            version: 3,
            operator_codes: Some(codes),
            subgraphs: Some(subgraphs),
            buffers: Some(buffers),
            ..Default::default()
        },
    );
    tfl::finish_model_buffer(&mut fbb, model);
    fbb.finished_data().to_vec()
}

#[test]
fn tflite_header_declaring_terabytes_is_refused_without_allocating() {
    // Allocating 4 TiB would abort the test process; an error proves it was not tried.
    let err = load(Format::Tflite, &tflite_with_huge_tensor()).unwrap_err().to_string();
    assert!(err.contains("huge") && err.contains("buffer holds 16"), "{err}");
}

/// An ONNX model whose initializer declares 2^40 floats over 16 bytes.
fn onnx_with_huge_initializer() -> Vec<u8> {
    use tract_onnx::pb;
    let graph = pb::GraphProto {
        node: vec![pb::NodeProto {
            op_type: "Add".into(),
            input: vec!["x".into(), "huge".into()],
            output: vec!["y".into()],
            ..Default::default()
        }],
        initializer: vec![pb::TensorProto {
            name: "huge".into(),
            dims: vec![1 << 20, 1 << 20],
            data_type: 1,
            raw_data: vec![0; 16],
            ..Default::default()
        }],
        input: vec![onnx_build::value_info("x", &[1, 1])],
        output: vec![pb::ValueInfoProto { name: "y".into(), r#type: None, ..Default::default() }],
        ..Default::default()
    };
    onnx_build::model(graph)
}

#[test]
fn onnx_initializer_declaring_terabytes_is_refused_without_allocating() {
    let err = load(Format::Onnx, &onnx_with_huge_initializer()).unwrap_err().to_string();
    assert!(err.contains("huge") && err.contains("the file holds 4"), "{err}");
}

#[test]
fn a_model_that_fails_to_load_leaves_others_loadable() {
    assert!(load(Format::Tflite, &tflite_with_huge_tensor()).is_err());
    let bytes = std::fs::read(models_dir().join("mediapipe__hand_recrop.tflite")).unwrap();
    assert!(load(Format::Tflite, &bytes).is_ok());
}
