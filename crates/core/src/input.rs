//! Typed input parts (text, image, video, json, binary). In JSON, binary kinds carry
//! base64 in `data`; over gRPC they carry raw bytes.

use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Text,
    Image,
    Video,
    Json,
    Binary,
}

impl InputKind {
    pub fn parse(raw: &str) -> Result<Self, crate::Error> {
        Ok(match raw {
            "text" => InputKind::Text,
            "image" => InputKind::Image,
            "video" => InputKind::Video,
            "json" => InputKind::Json,
            "binary" => InputKind::Binary,
            other => {
                return Err(crate::Error::invalid(format!(
                    "unknown input type {other:?}: use text, image, video, json or binary"
                )))
            }
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Text => "text",
            InputKind::Image => "image",
            InputKind::Video => "video",
            InputKind::Json => "json",
            InputKind::Binary => "binary",
        }
    }
    pub fn is_bytes(self) -> bool {
        matches!(
            self,
            InputKind::Image | InputKind::Video | InputKind::Binary
        )
    }
}

/// The content of one input part.
#[derive(Debug, Clone, PartialEq)]
pub enum PartData {
    Text(String),
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

/// One typed input of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct InputPart {
    pub kind: InputKind,
    pub data: PartData,
    pub mime_type: Option<String>,
    pub name: Option<String>,
}

impl InputPart {
    pub fn text(s: impl Into<String>) -> Self {
        Self {
            kind: InputKind::Text,
            data: PartData::Text(s.into()),
            mime_type: None,
            name: None,
        }
    }
    pub fn json(v: serde_json::Value) -> Self {
        Self {
            kind: InputKind::Json,
            data: PartData::Json(v),
            mime_type: None,
            name: None,
        }
    }
    pub fn bytes(kind: InputKind, b: Vec<u8>) -> Self {
        Self {
            kind,
            data: PartData::Bytes(b),
            mime_type: None,
            name: None,
        }
    }

    /// Builds a part from its kind and raw bytes as they arrive over gRPC.
    pub fn from_wire(kind: InputKind, raw: Vec<u8>) -> Result<Self, crate::Error> {
        let data =
            match kind {
                InputKind::Text => PartData::Text(
                    String::from_utf8(raw)
                        .map_err(|_| crate::Error::invalid("text input is not valid utf-8"))?,
                ),
                InputKind::Json => PartData::Json(serde_json::from_slice(&raw).map_err(|e| {
                    crate::Error::invalid(format!("json input does not parse: {e}"))
                })?),
                _ => PartData::Bytes(raw),
            };
        Ok(Self {
            kind,
            data,
            mime_type: None,
            name: None,
        })
    }

    /// The raw bytes sent over gRPC: utf-8 text, JSON text, or the bytes themselves.
    pub fn to_wire(&self) -> Vec<u8> {
        match &self.data {
            PartData::Text(s) => s.as_bytes().to_vec(),
            PartData::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
            PartData::Bytes(b) => b.clone(),
        }
    }

    /// Size counted against the payload limit.
    pub fn approx_size(&self) -> usize {
        match &self.data {
            PartData::Text(s) => s.len(),
            PartData::Json(v) => v.to_string().len(),
            PartData::Bytes(b) => b.len(),
        }
    }

    pub fn from_json_value(index: usize, value: &serde_json::Value) -> Result<Self, crate::Error> {
        let field = format!("inputs[{index}]");
        let obj = value.as_object().ok_or_else(|| {
            crate::Error::invalid(format!("{field} must be an object with type and data"))
                .with_field(&field)
        })?;
        let kind_raw = obj.get("type").and_then(|v| v.as_str()).ok_or_else(|| {
            crate::Error::invalid(format!("{field}.type must be a string"))
                .with_field(&format!("{field}.type"))
        })?;
        let opt_str = |k: &str| -> Result<Option<String>, crate::Error> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(
                    crate::Error::invalid(format!("{field}.{k} must be a string"))
                        .with_field(&format!("{field}.{k}")),
                ),
            }
        };
        let (mime_type, name) = (opt_str("mime_type")?, opt_str("name")?);
        let data = obj.get("data").cloned().unwrap_or(serde_json::Value::Null);
        Self::from_fields(&field, kind_raw, data, mime_type, name)
    }

    /// A part from its fields as JSON gives them (`field` names it in errors).
    fn from_fields(
        field: &str,
        kind_raw: &str,
        data: serde_json::Value,
        mime_type: Option<String>,
        name: Option<String>,
    ) -> Result<Self, crate::Error> {
        let kind =
            InputKind::parse(kind_raw).map_err(|e| e.with_field(&format!("{field}.type")))?;
        let data_field = format!("{field}.data");
        let data = match (kind, data) {
            (InputKind::Json, v) => PartData::Json(v),
            (InputKind::Text, serde_json::Value::String(s)) => PartData::Text(s),
            (InputKind::Text, _) => {
                return Err(crate::Error::invalid(format!(
                    "{data_field} must be a string for text"
                ))
                .with_field(&data_field))
            }
            (_, serde_json::Value::String(s)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|e| {
                        crate::Error::invalid(format!("{data_field} is not valid base64: {e}"))
                            .with_field(&data_field)
                    })?;
                PartData::Bytes(bytes)
            }
            (_, _) => {
                return Err(crate::Error::invalid(format!(
                    "{data_field} must be a base64 string for {kind_raw}"
                ))
                .with_field(&data_field))
            }
        };
        Ok(Self {
            kind,
            data,
            mime_type,
            name,
        })
    }

    pub fn to_json_value(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("type".into(), self.kind.as_str().into());
        let data = match &self.data {
            PartData::Text(s) => serde_json::Value::String(s.clone()),
            PartData::Json(v) => v.clone(),
            PartData::Bytes(b) => {
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
        };
        obj.insert("data".into(), data);
        if let Some(m) = &self.mime_type {
            obj.insert("mime_type".into(), m.clone().into());
        }
        if let Some(n) = &self.name {
            obj.insert("name".into(), n.clone().into());
        }
        serde_json::Value::Object(obj)
    }
}

// Direct (de)serialisation: a stored task's inputs are encoded at submit and
// decoded at every claim and result, so no intermediate `Value` tree (and no copy
// of the data) on the way. Keys in the order a `Value` object gives them.
impl Serialize for InputPart {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let len = 2 + usize::from(self.mime_type.is_some()) + usize::from(self.name.is_some());
        let mut m = s.serialize_map(Some(len))?;
        match &self.data {
            PartData::Text(t) => m.serialize_entry("data", t)?,
            PartData::Json(v) => m.serialize_entry("data", v)?,
            PartData::Bytes(b) => {
                m.serialize_entry("data", &base64::engine::general_purpose::STANDARD.encode(b))?
            }
        }
        if let Some(mime) = &self.mime_type {
            m.serialize_entry("mime_type", mime)?;
        }
        if let Some(name) = &self.name {
            m.serialize_entry("name", name)?;
        }
        m.serialize_entry("type", self.kind.as_str())?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for InputPart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            data: serde_json::Value,
            #[serde(default)]
            mime_type: Option<String>,
            #[serde(default)]
            name: Option<String>,
        }
        let f = Fields::deserialize(d)?;
        InputPart::from_fields("inputs[0]", &f.kind, f.data, f.mime_type, f.name)
            .map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serde_gives_what_the_json_value_form_gives() {
        let mut named = InputPart::bytes(InputKind::Image, vec![9, 8, 7]);
        named.mime_type = Some("image/png".into());
        named.name = Some("chart".into());
        let parts = vec![
            InputPart::text("Q4 \"sales\" data"),
            InputPart::json(json!({"b": [1, {"c": null}], "a": "x"})),
            InputPart::json(serde_json::Value::Null),
            named,
        ];
        for p in parts {
            let text = serde_json::to_string(&p).unwrap();
            assert_eq!(text, p.to_json_value().to_string());
            let back: InputPart = serde_json::from_str(&text).unwrap();
            assert_eq!(back, p);
        }
        for bad in [
            json!({"type": "text", "data": 3}),
            json!({"type": "image", "data": "not base64!"}),
            json!({"type": "image"}),
            json!({"type": "sound", "data": ""}),
            json!({"data": "x"}),
            json!({"type": "text", "data": "x", "name": 5}),
        ] {
            assert!(
                serde_json::from_value::<InputPart>(bad.clone()).is_err(),
                "{bad}"
            );
            assert!(InputPart::from_json_value(0, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_round_trip_through_json() {
        let parts = vec![
            InputPart::text("Q4 sales data: 10, 20"),
            InputPart::json(json!({"a": [1, 2]})),
            InputPart::bytes(InputKind::Image, vec![0, 1, 2, 255]),
        ];
        for p in parts {
            let v = p.to_json_value();
            assert_eq!(InputPart::from_json_value(0, &v).unwrap(), p);
            assert_eq!(
                InputPart::from_wire(p.kind, p.to_wire()).unwrap().data,
                p.data
            );
        }
    }

    #[test]
    fn bad_parts_are_refused_with_their_location() {
        let e =
            InputPart::from_json_value(2, &json!({"type": "image", "data": "***"})).unwrap_err();
        assert!(e.message.contains("inputs[2]"), "{}", e.message);
        assert!(InputPart::from_json_value(0, &json!({"type": "audio", "data": ""})).is_err());
        assert!(InputPart::from_json_value(0, &json!({"type": "text", "data": 5})).is_err());
        assert!(InputPart::from_json_value(0, &json!("text")).is_err());
        assert!(InputPart::from_wire(InputKind::Text, vec![0xff, 0xfe]).is_err());
    }
}
