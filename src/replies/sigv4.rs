//! AWS IoT's MQTT over WebSocket, signed with SigV4 from the function's role:
//! the presigned `wss://{endpoint}/mqtt` URL, signed anew on every (re)connect
//! so its date and the role's credentials are always fresh, and for the region
//! the endpoint is in ([`endpoint_region`]), which need not be the function's.
//!
//! AWS IoT's rule (Developer Guide, "MQTT over WebSocket"): the signing name is
//! `iotdevicegateway`, the body hash is that of the empty string, only `host`
//! is signed, and a session token is appended to the URL *after* signing, as
//! `X-Amz-Security-Token`, not signed with it. aws-sigv4's
//! [`SessionTokenMode::Exclude`] does exactly that.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation, SigningError, SigningSettings,
};
use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};
use tracing::warn;

use super::Connect;

/// AWS IoT's signing name for its device gateway (MQTT over WebSocket).
pub const IOT_SIGNING_NAME: &str = "iotdevicegateway";
/// The longest `ResponseTimeout` on Lambda: API Gateway's integrations end at 29 s.
pub const MAX_LAMBDA_RESPONSE_TIMEOUT: u32 = 25;

/// How long a signed URL may be used to connect: each connect signs its own.
const URL_LIFETIME: Duration = Duration::from_secs(300);

/// Presigns the GET of `request`'s URI in place for `service` in `region`: the
/// signature and its parameters go into the query, with the session token of
/// `credentials` (if any) appended after the signature, unsigned.
pub fn presign(
    request: &mut http::Request<()>,
    credentials: Credentials,
    region: &str,
    service: &str,
    now: SystemTime,
    expires_in: Duration,
) -> Result<(), SigningError> {
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires_in);
    settings.session_token_mode = SessionTokenMode::Exclude;
    let identity = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(settings)
        .build()
        .expect("identity, region, name, time and settings are all set")
        .into();
    let uri = request.uri().to_string();
    let signable = SignableRequest::new("GET", uri.as_str(), std::iter::empty(), SignableBody::Bytes(&[]))?;
    let (instructions, _signature) = sign(signable, &params)?.into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

/// Where the Lambda function's reply connection goes, and as whom.
#[derive(Clone)]
pub struct IotMqtt {
    /// `wss://{endpoint}/mqtt` (or `ws://` in tests).
    pub url: String,
    /// Unique per container: AWS IoT disconnects an older connection with the same id.
    pub client_id: String,
    /// Signs the URL; `None` connects unsigned (a local broker).
    pub signer: Option<Signer>,
    /// The largest packet the connection takes.
    pub max_packet: u32,
}

/// The role's credentials and region, for signing each connect.
#[derive(Clone)]
pub struct Signer {
    /// The SDK's credentials provider (the function's role).
    pub credentials: aws_credential_types::provider::SharedCredentialsProvider,
    /// The region to sign for when the endpoint's host does not name one.
    pub region: String,
}

/// The region an AWS IoT endpoint's URL names in its host,
/// `{prefix}.iot.{region}.amazonaws.com` (`-ats` prefixes, `iot-fips`, and
/// `.amazonaws.com.cn` in China alike); `None` for any other host.
pub fn endpoint_region(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = host.split(':').next().unwrap_or(host).trim_end_matches('.').to_ascii_lowercase();
    let name = host.strip_suffix(".amazonaws.com").or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let mut labels = name.rsplit('.');
    let (region, service) = (labels.next()?, labels.next()?);
    let prefix = labels.next()?;
    let region_shaped =
        region.contains('-') && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (matches!(service, "iot" | "iot-fips") && !prefix.is_empty() && region_shaped).then(|| region.to_owned())
}

impl IotMqtt {
    /// AWS IoT's largest payload (128 KiB), with room for the topic and properties.
    pub const MAX_PACKET: u32 = 128 * 1024 + 64 * 1024;

    /// A client id unique to this process: `{function name}-{16 hex digits}`.
    /// The template grants `iot:Connect` on `client/{function name}-*`.
    pub fn client_id(function_name: Option<&str>) -> String {
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).expect("the OS has randomness");
        format!("{}-{}", function_name.unwrap_or("mqtt-http-publish"), hex::encode(random))
    }

    /// The options: WebSocket (TLS for `wss://`, with the system's roots over
    /// ring), each handshake's URL presigned afresh.
    pub fn options(&self) -> MqttOptions {
        // For a WebSocket rumqttc takes the whole URL as the broker's address.
        let port = port_of(&self.url);
        let mut options = super::options(self.client_id.clone(), self.url.clone(), port, self.max_packet);
        if self.url.starts_with("wss://") {
            options.set_transport(Transport::wss_with_config(TlsConfiguration::Rustls(Arc::new(
                crate::aws::tls_client_config(),
            ))));
        } else {
            options.set_transport(Transport::Ws);
        }
        if let Some(signer) = self.signer.clone() {
            let region = endpoint_region(&self.url).unwrap_or(signer.region);
            let credentials = signer.credentials;
            options.set_request_modifier(move |mut request: http::Request<()>| {
                let (credentials, region) = (credentials.clone(), region.clone());
                async move {
                    match credentials.provide_credentials().await {
                        Ok(credentials) => {
                            let now = SystemTime::now();
                            if let Err(error) =
                                presign(&mut request, credentials, &region, IOT_SIGNING_NAME, now, URL_LIFETIME)
                            {
                                warn!(%error, "cannot sign the WebSocket URL for AWS IoT");
                            }
                        }
                        Err(error) => warn!(%error, "no AWS credentials to sign the WebSocket URL for AWS IoT"),
                    }
                    request
                }
            });
        }
        options
    }

    /// A [`Connect`] opening this connection.
    pub fn connect(self) -> Connect {
        Box::new(move || {
            let options = self.options();
            Box::pin(async move { Ok(options) })
        })
    }
}

/// The port of a `ws://` or `wss://` URL (80 and 443 by default).
fn port_of(url: &str) -> u16 {
    let (default, rest) = match url.split_once("://") {
        Some(("wss", rest)) => (443, rest),
        Some((_, rest)) => (80, rest),
        None => (443, url),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once(':').map_or(default, |(_, port)| port.parse().unwrap_or(default))
}

#[cfg(test)]
mod tests {
    //! AWS's published SigV4 vectors for presigned URLs (the CRT signing test
    //! suite shipped in aws-sigv4, `get-vanilla*`), driven through [`presign`];
    //! and the region each endpoint's URL is signed for.

    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
    /// 2015-08-30T12:36:00Z.
    const WHEN: u64 = 1_440_938_160;

    fn presigned(url: &str, token: Option<&str>, service: &str) -> String {
        let mut request = http::Request::get(url).body(()).unwrap();
        let credentials = Credentials::new(AKID, SECRET, token.map(str::to_owned), None, "test");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(WHEN);
        presign(&mut request, credentials, "us-east-1", service, now, Duration::from_secs(3600)).unwrap();
        request.uri().to_string()
    }

    fn signature(url: &str) -> &str {
        let start = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
        &url[start..start + 64]
    }

    #[test]
    fn the_get_vanilla_query_vector_signs_as_aws_published() {
        let url = presigned("https://example.amazonaws.com/", None, "service");
        assert_eq!(
            url,
            "https://example.amazonaws.com/?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
             &X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d"
        );
    }

    #[test]
    fn a_session_token_is_appended_after_signing_not_signed() {
        // AWS IoT's rule: with a token the signature is get-vanilla's, and the token follows it.
        let url = presigned("https://example.amazonaws.com/", Some(TOKEN), "service");
        assert_eq!(signature(&url), "e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d");
        assert_ne!(
            signature(&url),
            "7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c",
            "the vector's signature with the token signed (get-vanilla-with-session-token): IoT refuses it"
        );
        assert!(url.ends_with(&format!("&X-Amz-Security-Token={TOKEN}")), "{url}");
        assert!(url.find("X-Amz-Signature").unwrap() < url.find("X-Amz-Security-Token").unwrap());
    }

    #[test]
    fn the_iot_websocket_url_is_signed_for_the_device_gateway_with_an_empty_body_hash() {
        // Computed independently (a Python SigV4 over the same canonical request:
        // GET /mqtt, host only, the empty string's SHA-256).
        let url = presigned("wss://example-ats.iot.us-east-1.amazonaws.com/mqtt", Some(TOKEN), IOT_SIGNING_NAME);
        assert!(url.starts_with("wss://example-ats.iot.us-east-1.amazonaws.com/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fiotdevicegateway%2Faws4_request&"), "{url}");
        assert_eq!(signature(&url), "35e221b41b3d3752a12d668dc8f02946c5fb882fc6e2e4adaa800dfea882ea00");
        assert!(url.ends_with(&format!("&X-Amz-Security-Token={TOKEN}")));
    }

    #[test]
    fn the_region_comes_from_an_iot_endpoint_s_host() {
        for (url, region) in [
            ("wss://a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com/mqtt", "eu-west-1"),
            // A legacy (VeriSign) endpoint.
            ("wss://a1b2c3d4e5f6g7.iot.ap-southeast-2.amazonaws.com/mqtt", "ap-southeast-2"),
            ("wss://a1b2c3d4e5f6g7.ats.iot.cn-north-1.amazonaws.com.cn/mqtt", "cn-north-1"),
            ("wss://data.iot-fips.us-gov-west-1.amazonaws.com/mqtt", "us-gov-west-1"),
            ("wss://A1B2-ATS.IOT.US-EAST-2.AMAZONAWS.COM:443/mqtt?x=1", "us-east-2"),
            ("a1b2-ats.iot.sa-east-1.amazonaws.com", "sa-east-1"),
        ] {
            assert_eq!(endpoint_region(url).as_deref(), Some(region), "{url}");
        }
    }

    #[test]
    fn any_other_host_names_no_region() {
        for url in [
            "ws://127.0.0.1:18831/mqtt",
            "ws://localhost/mqtt",
            "wss://mqtt.example.com/mqtt",
            "wss://iot.eu-west-1.amazonaws.com/mqtt",
            "wss://a1b2.execute-api.eu-west-1.amazonaws.com/mqtt",
            "wss://a1b2-ats.iot.eu-west-1.amazonaws.com.example.com/mqtt",
            "wss://a1b2-ats.iot.notaregion.amazonaws.com/mqtt",
            "wss://a1b2-ats.iot.eu-west-1.amazonaws.com@example.com/mqtt",
        ] {
            assert_eq!(endpoint_region(url), None, "{url}");
        }
    }

    /// The URL the connection's WebSocket handshake would ask for, signed by `signer_region`'s signer.
    async fn handshake_url(url: &str, signer_region: &str) -> String {
        let credentials = Credentials::new(AKID, SECRET, Some(TOKEN.to_owned()), None, "test");
        let signer = Signer {
            credentials: aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
            region: signer_region.to_owned(),
        };
        let iot = IotMqtt { url: url.to_owned(), client_id: "test".into(), signer: Some(signer), max_packet: 1024 };
        let modify = iot.options().request_modifier().expect("a signed connection modifies its handshake");
        let request = http::Request::get(url).body(()).unwrap();
        modify(request).await.uri().to_string()
    }

    #[tokio::test]
    async fn the_websocket_url_is_signed_for_the_endpoint_s_region_not_the_function_s() {
        let url = handshake_url("wss://a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com/mqtt", "us-east-1").await;
        assert!(url.contains("%2Feu-west-1%2Fiotdevicegateway%2Faws4_request"), "{url}");
        let url = handshake_url("ws://127.0.0.1:18831/mqtt", "us-east-1").await;
        assert!(
            url.contains("%2Fus-east-1%2Fiotdevicegateway%2Faws4_request"),
            "a local broker: the signer's region: {url}"
        );
    }

    #[test]
    fn websocket_urls_name_their_port() {
        assert_eq!(port_of("wss://a-ats.iot.eu-west-1.amazonaws.com/mqtt"), 443);
        assert_eq!(port_of("ws://127.0.0.1:18831/mqtt"), 18831);
        assert_eq!(port_of("ws://localhost/mqtt"), 80);
    }
}
