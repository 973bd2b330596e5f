//! [`ImageRef`]: what a Kubernetes container's `image` says about a module. shoal pulls
//! nothing from a registry: an image names an uploaded module, by digest or by the name it
//! was uploaded with.

use crate::{Digest, Error, Result};

/// A module as an image names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `sha256:<hex>`, or `anything@sha256:<hex>`: the module with this digest.
    Digest(Digest),
    /// Any other image: the module most recently uploaded with this name, or with the name
    /// less a `:latest` tag (`hello:latest` finds a module named `hello`).
    Name(String),
}

impl ImageRef {
    /// Reads an image; only a malformed digest is refused.
    pub fn parse(image: &str) -> Result<ImageRef> {
        let digest = image.rsplit_once('@').map_or(image, |(_, digest)| digest);
        if digest.starts_with("sha256:") {
            return digest
                .parse()
                .map(ImageRef::Digest)
                .map_err(|error| match error {
                    Error::Invalid(field) => Error::invalid("image", field.reason),
                    other => other,
                });
        }
        if image.is_empty() {
            return Err(Error::invalid("image", "must not be empty"));
        }
        Ok(ImageRef::Name(image.to_owned()))
    }

    /// The module names this image may stand for, the most specific first.
    pub fn names(&self) -> Vec<&str> {
        match self {
            ImageRef::Digest(_) => Vec::new(),
            ImageRef::Name(name) => {
                let mut names = vec![name.as_str()];
                if let Some(untagged) = name.strip_suffix(":latest") {
                    names.push(untagged);
                }
                names
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_name_digests_or_module_names() {
        let digest = Digest::of(b"module");
        assert_eq!(
            ImageRef::parse(digest.as_str()).unwrap(),
            ImageRef::Digest(digest.clone())
        );
        assert_eq!(
            ImageRef::parse(&format!("registry.example/hello@{digest}")).unwrap(),
            ImageRef::Digest(digest)
        );
        let named = ImageRef::parse("hello:latest").unwrap();
        assert_eq!(named.names(), ["hello:latest", "hello"]);
        assert_eq!(ImageRef::parse("hello:v2").unwrap().names(), ["hello:v2"]);
        let error = ImageRef::parse("x@sha256:abc").unwrap_err().to_string();
        assert!(
            error.contains("image") && error.contains("64 hex digits"),
            "{error}"
        );
        assert!(ImageRef::parse("").is_err());
    }
}
