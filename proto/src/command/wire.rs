//! The command envelope on the wire, by version.
//!
//! ```text
//! version 1, 2   version ‖ id ‖ issued_at ‖ expires_at ‖ target ‖ payload ‖ key_id ‖ signature
//! version 3-5    version ‖ id ‖ issued_at ‖ expires_at ‖ target ‖ payload ‖ fleet ‖ cosignatures
//!                ‖ key_id ‖ signature
//! ```
//!
//! The deploy payloads that carry more than a manifest encodes on its own are here too
//! (`content_manifest`, `profiled_manifest`).
//!
//! Version 3 inserts the fleet id and the cosignatures before the key id, so that in every
//! version the signature is the last 64 bytes. A version 1 or 2 command has no fleet (the
//! empty string) and no cosignatures; it is written in the old layout, which agents that
//! predate version 3 read.

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Command, Cosignature, Payload, Target};

/// Fields of the largest layout (version 3).
const FIELDS: usize = 10;

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v3 = self.version >= 3;
        if !v3 && (!self.fleet.is_empty() || !self.cosignatures.is_empty()) {
            // `Command::new`, `sign` and `cosign` raise the version; only a hand-built
            // envelope can get here.
            return Err(serde::ser::Error::custom("a fleet id or cosignatures need command version 3"));
        }
        let mut t = s.serialize_tuple(if v3 { FIELDS } else { FIELDS - 2 })?;
        t.serialize_element(&self.version)?;
        t.serialize_element(&self.id)?;
        t.serialize_element(&self.issued_at)?;
        t.serialize_element(&self.expires_at)?;
        t.serialize_element(&self.target)?;
        t.serialize_element(&self.payload)?;
        if v3 {
            t.serialize_element(&self.fleet)?;
            t.serialize_element(&self.cosignatures)?;
        }
        t.serialize_element(&self.key_id)?;
        t.serialize_element(&Sig(self.signature))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Command, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Command;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a command envelope")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
                let mut n = 0;
                let mut next = || {
                    n += 1;
                    n - 1
                };
                macro_rules! field {
                    () => {{
                        let i = next();
                        seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?
                    }};
                }
                let version: u16 = field!();
                let id: [u8; 16] = field!();
                let issued_at: u64 = field!();
                let expires_at: u64 = field!();
                let target: Target = field!();
                let payload: Payload = field!();
                let (fleet, cosignatures): (String, Vec<Cosignature>) =
                    if version >= 3 { (field!(), field!()) } else { (String::new(), vec![]) };
                let key_id: [u8; 8] = field!();
                let Sig(signature) = field!();
                Ok(Command {
                    version,
                    id,
                    issued_at,
                    expires_at,
                    target,
                    payload,
                    fleet,
                    cosignatures,
                    key_id,
                    signature,
                })
            }
        }
        // postcard reads a tuple's elements one after the other with no count on the wire,
        // so the visitor may stop after the older layout's eight.
        d.deserialize_tuple(FIELDS, V)
    }
}

/// An ed25519 signature: 64 raw bytes on the wire (serde's derives stop at arrays of 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sig(pub [u8; 64]);

impl Serialize for Sig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sig, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sig, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(Sig(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

/// serde for a `[u8; 64]` field, through [`Sig`].
pub(super) mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Sig;

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        Sig(*bytes).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        Sig::deserialize(d).map(|s| s.0)
    }
}

/// serde for [`Payload::DeployModelContent`]: the manifest as a fixed-size one encodes, then
/// its [`ContentChunks`](crate::ota::ContentChunks).
pub(super) mod content_manifest {
    use serde::{de::Deserializer, ser::Error, Deserialize, Serialize, Serializer};

    use crate::ota::{ContentChunks, Manifest};

    pub fn serialize<S: Serializer>(m: &Manifest, s: S) -> Result<S::Ok, S::Error> {
        let content = m.content.as_ref().ok_or_else(|| S::Error::custom("a content deploy without content chunks"))?;
        (m, content).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Manifest, D::Error> {
        let (mut m, content) = <(Manifest, ContentChunks)>::deserialize(d)?;
        m.content = Some(content);
        Ok(m)
    }
}

/// serde for [`Payload::DeployModelProfiled`]: the manifest as a fixed-size one encodes, its
/// content chunks if it is cut by content, then its profile.
pub(super) mod profiled_manifest {
    use serde::{de::Deserializer, ser::Error, Deserialize, Serialize, Serializer};

    use crate::ota::{ContentChunks, Manifest};
    use crate::profile::Profile;

    pub fn serialize<S: Serializer>(m: &Manifest, s: S) -> Result<S::Ok, S::Error> {
        let profile = m.profile.as_ref().ok_or_else(|| S::Error::custom("a profiled deploy without a profile"))?;
        (m, &m.content, profile).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Manifest, D::Error> {
        let (mut m, content, profile) = <(Manifest, Option<ContentChunks>, Profile)>::deserialize(d)?;
        m.content = content;
        m.profile = Some(profile);
        Ok(m)
    }
}
