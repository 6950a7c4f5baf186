//! Small ONNX graphs built in the tests themselves: models with a property no shipped model
//! has (a huge declared initializer, a load that takes seconds, a run that takes minutes).

#![allow(dead_code)]

use prost::Message;
use tract_onnx::pb;

/// A float tensor input or output of shape `dims`.
pub fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(*d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node `op(inputs) -> output`.
pub fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// `ConstantOfShape(shape) -> output`, filled with `value`.
pub fn constant_of_shape(shape: &str, output: &str, value: f32) -> pb::NodeProto {
    let mut fill = node("ConstantOfShape", &[shape], output);
    fill.attribute = vec![pb::AttributeProto {
        name: "value".into(),
        r#type: pb::attribute_proto::AttributeType::Tensor as i32,
        t: Some(pb::TensorProto { dims: vec![1], data_type: 1, float_data: vec![value], ..Default::default() }),
        ..Default::default()
    }];
    fill
}

/// An int64 initializer.
pub fn int64s(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: 7,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// The encoded model of `graph`, opset 13.
pub fn model(graph: pb::GraphProto) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}
