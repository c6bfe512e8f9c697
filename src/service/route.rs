//! The route: what a request asks of the service, read from its request line
//! and headers. A browser's preflight is answered here, and a page on an
//! origin `[cors]` does not allow is refused before anything else.

use bytes::Bytes;
use http::{Method, Response};

use super::authorize::Wanted;
use super::Service;
use crate::acl::Action;
use crate::config::RuleSet;
use crate::contract::batch::{is_batch_path, parse_batch, BatchHead};
use crate::contract::{cors, parse_publish, ApiError, ClientId, HttpRequest, PublishHead, Topic};
use crate::publish::Publisher;

/// What a request asks the service to do. Each operation parses its own
/// request and has its own execute; the stages around them are the same.
#[derive(Debug)]
pub enum Operation {
    /// `POST /topics/{topic}`: publish one message.
    Publish(PublishHead),
    /// `POST /messages`: publish many messages, each answered on its own.
    PublishBatch(BatchHead),
}

/// Where a request goes.
pub(super) enum Routed {
    /// A browser's preflight from an allowed origin: answered at once.
    Preflight(Response<Bytes>),
    /// An operation, through the stages.
    To(Operation),
}

impl Operation {
    /// The topic the request's log line names, if it has one.
    pub fn topic(&self) -> Option<&Topic> {
        match self {
            Operation::Publish(head) => Some(&head.topic),
            Operation::PublishBatch(_) => None,
        }
    }

    /// The `client_id` the request asks for, if any.
    pub fn client_id(&self) -> Option<&ClientId> {
        match self {
            Operation::Publish(head) => head.options.client_id.as_ref(),
            Operation::PublishBatch(head) => head.client_id.as_ref(),
        }
    }

    /// What the operation does, on which topics its request line names: what
    /// the ACL must allow before its body is read. A batch's topics are in its
    /// body: each message is authorized on its own once the body is read.
    pub(super) fn wanted(&self) -> impl Iterator<Item = Wanted<'_>> {
        let wanted = match self {
            Operation::Publish(head) => Some(Wanted {
                action: Action::Publish,
                topic: &head.topic,
                qos: head.options.qos,
                retain: head.options.retain,
                denied: "the ACL does not allow this client to publish to this topic",
            }),
            Operation::PublishBatch(_) => None,
        };
        wanted.into_iter()
    }
}

impl<P: Publisher> Service<P> {
    /// Stage: the operation a request asks for, or the 4xx that says why none.
    /// `declared_len` is its body's, as declared.
    pub(super) fn route(
        &self,
        request: &HttpRequest<()>,
        declared_len: Option<u64>,
        rules: &RuleSet,
    ) -> Result<Routed, ApiError> {
        let cors = rules.cors.as_ref();
        if let Some(preflight) = cors::preflight(cors, request) {
            return Ok(Routed::Preflight(preflight));
        }
        if request.method == Method::POST && cors::refused_cross_origin(cors, &request.headers) {
            return Err(ApiError::OriginNotAllowed);
        }
        let backend = self.publisher.limits();
        if is_batch_path(&request.path) {
            let head = parse_batch(request, declared_len, backend, rules.limits.max_batch_bytes)?;
            return Ok(Routed::To(Operation::PublishBatch(head)));
        }
        let head = parse_publish(request, declared_len, backend, self.max_payload(rules))?;
        Ok(Routed::To(Operation::Publish(head)))
    }
}
