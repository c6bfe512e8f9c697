//! The AWS SDK config every adapter starts from, built once per process.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::tls;

/// One TLS stack (rustls on ring) and a small retry budget (2 attempts, short
/// backoff); each client sets its own timeouts. Makes no network call:
/// credentials, region and endpoints resolve on first use.
pub async fn sdk_config() -> SdkConfig {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_backoff(Duration::from_secs(1)),
        )
        .load()
        .await
}

/// Why the account's IoT data endpoint could not be found.
#[derive(Debug, thiserror::Error)]
#[error("AWS IoT's DescribeEndpoint failed: {0}")]
pub struct DescribeEndpointError(String);

/// The account's own AWS IoT data endpoint (`xxxxxxxx-ats.iot.REGION.amazonaws.com`),
/// asked of AWS IoT's `DescribeEndpoint` (endpoint type `iot:Data-ATS`) with the
/// SDK config's credentials and region, within `timeout`.
///
/// The generic `data-ats.iot.REGION.amazonaws.com` the SDK falls back on is not
/// an account's endpoint, and AWS documents `describe-endpoint` as the way to
/// learn it (AWS IoT Core developer guide, "AWS IoT device data and service
/// endpoints"). One signed GET does it; the `aws-sdk-iot` crate would add the
/// whole IoT control plane (hundreds of operations) to the build for this one call.
/// `control_plane` overrides `https://iot.REGION.amazonaws.com` (tests point it at moto).
pub async fn describe_iot_data_endpoint(
    sdk: &SdkConfig,
    control_plane: Option<&str>,
    timeout: Duration,
) -> Result<String, DescribeEndpointError> {
    let attempts = async {
        match describe(sdk, control_plane).await {
            // DescribeEndpoint has a request rate quota of its own, which a burst of cold
            // containers can meet: one more try, after a jittered pause, for a throttled,
            // failed or unreachable call.
            Err(Attempt { retry: true, error }) => {
                tracing::debug!(%error, "DescribeEndpoint failed; trying once more");
                tokio::time::sleep(jittered_pause()).await;
                describe(sdk, control_plane).await.map_err(|a| a.error)
            }
            other => other.map_err(|a| a.error),
        }
    };
    tokio::time::timeout(timeout, attempts)
        .await
        .unwrap_or_else(|_| Err(DescribeEndpointError(format!("no answer within {timeout:?}"))))
}

/// 100 to 400 ms, so that containers throttled together do not try again together.
fn jittered_pause() -> Duration {
    let mut byte = [0u8; 1];
    getrandom::getrandom(&mut byte).unwrap_or_default();
    Duration::from_millis(100 + u64::from(byte[0]) * 300 / 255)
}

/// One failed call, and whether another try may go better.
struct Attempt {
    retry: bool,
    error: DescribeEndpointError,
}

impl Attempt {
    fn last(error: DescribeEndpointError) -> Attempt {
        Attempt { retry: false, error }
    }
}

async fn describe(sdk: &SdkConfig, control_plane: Option<&str>) -> Result<String, Attempt> {
    use aws_credential_types::provider::ProvideCredentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use http_body_util::BodyExt;

    let fail = |what: &str, e: &dyn std::fmt::Display| Attempt::last(DescribeEndpointError(format!("{what}: {e}")));
    let region = sdk.region().ok_or_else(|| fail("no AWS Region", &"none is configured"))?;
    let base = match control_plane {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None if region.as_ref().starts_with("cn-") => format!("https://iot.{region}.amazonaws.com.cn"),
        None => format!("https://iot.{region}.amazonaws.com"),
    };
    let url = format!("{base}/endpoint?endpointType=iot%3AData-ATS");
    let credentials = sdk
        .credentials_provider()
        .ok_or_else(|| fail("no AWS credentials", &"none are configured"))?
        .provide_credentials()
        .await
        .map_err(|e| fail("no AWS credentials", &e))?;
    let identity = credentials.into();
    // The signing name AWS's own SDKs use for the IoT control plane (botocore's and
    // aws-sdk-iot's service model: signingName "iot").
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region.as_ref())
        .name("iot")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail("signing", &e))?
        .into();
    let signable = SignableRequest::new("GET", url.as_str(), std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| fail("signing", &e))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| fail("signing", &e))?.into_parts();
    let user_agent = match sdk.app_name() {
        Some(app) => format!("mqtt-http-publish/{} app/{app}", env!("CARGO_PKG_VERSION")),
        None => format!("mqtt-http-publish/{}", env!("CARGO_PKG_VERSION")),
    };
    let mut request = http::Request::get(&url)
        .header(http::header::USER_AGENT, user_agent)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| fail("the request", &e))?;
    instructions.apply_to_request_http1x(&mut request);

    // Reading the system's certificates is file work: off the runtime's thread, which on
    // Lambda is the only one, so the lookup started during init does not hold up init.
    let client = tokio::task::spawn_blocking(https_client).await.map_err(|e| fail("the HTTPS client", &e))?;
    let response = client.request(request).await.map_err(|e| Attempt { retry: true, ..fail("the call", &e) })?;
    let status = response.status();
    // The answer is a few dozen bytes; read no more than 64 KiB of anything else.
    let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| Attempt { retry: true, ..fail("the answer", &e) })?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        let error = DescribeEndpointError(format!("HTTP {status}: {text}"));
        return Err(Attempt { retry: status.as_u16() == 429 || status.is_server_error(), error });
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        endpoint_address: String,
    }
    let answer: Answer = serde_json::from_slice(&body).map_err(|e| fail("the answer", &e))?;
    Ok(answer.endpoint_address)
}

/// TLS over ring with the system's roots: the SDK's HTTP client and the
/// WebSocket that waits for replies on AWS IoT both use it.
pub fn tls_client_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An HTTP/1.1 client over rustls on ring with the system's roots, as the SDK's own.
fn https_client() -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client_config())
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}
