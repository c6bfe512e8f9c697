//! The failure underneath an error, kept as an error of its own: an error
//! returns it from `source()`, so a log line can print the whole chain.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Why something failed: a typed error (an SDK's, a client's), or a sentence
/// where there is no error to keep. Cheap to clone, so an error that carries
/// one can be handed to every caller that waited on the same call.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync + 'static>);

impl Cause {
    /// Keeps `error` as the cause.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(error))
    }
}

/// A cause that is only a sentence.
#[derive(Debug)]
struct Sentence(String);

impl fmt::Display for Sentence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Sentence {}

impl From<String> for Cause {
    fn from(sentence: String) -> Cause {
        Cause::new(Sentence(sentence))
    }
}

impl From<&str> for Cause {
    fn from(sentence: &str) -> Cause {
        Cause::from(sentence.to_owned())
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// Two causes are the same when they say the same.
impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

/// An error and every cause under it on one line, `what failed: why: why`,
/// for log lines (an error's own `Display` names only what failed).
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the call failed")]
    struct Outer(#[source] Cause);

    #[derive(Debug, thiserror::Error)]
    #[error("the socket closed")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_in_order() {
        let inner = Inner(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe"));
        let outer = Outer(Cause::new(inner));
        assert_eq!(Chain(&outer).to_string(), "the call failed: the socket closed: broken pipe");
        assert_eq!(Chain(&Outer("no PUBACK".into())).to_string(), "the call failed: no PUBACK");
    }
}
