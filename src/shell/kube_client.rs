//! The Kubernetes client: kube's own stack, with hyper's read buffers kept small.
//!
//! hyper grows a connection's read buffer to what one read brought, up to ~408 KiB, and keeps the
//! allocation for as long as the connection lives. A watch runs on the connection its initial
//! list used, so every connection that carried a page of a large list (500 Deployments are ~2 MB)
//! held ~400 KiB for good: a heap profile at 10,000 Deployments found 1.1 MB of the 17 MB live in
//! these buffers. Reads of at most [`READ_BUFFER_MAX`] cost a few more system calls while the
//! lists arrive and nothing after.
//!
//! kube offers no setting for this, so the stack is built here from the parts kube exports, as
//! kube's `ClientBuilder::try_from(Config)` builds it: TLS from the kubeconfig, the connect, read
//! and write timeouts, the base URI, retries of 429/503/504, authentication with its refresh,
//! impersonation headers. Two cases go to kube's own builder unchanged: a proxy (kube's tunnel
//! and SOCKS connectors), and client certificates from an exec plugin (their expiry makes kube
//! rebuild the client). Neither arises in a cluster with a ServiceAccount.

use http_body_util::BodyExt as _;
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt as _, DynBody};
use tower::retry::RetryLayer;
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};

/// The most one read of a connection brings (hyper's minimum is 8 KiB, its default ~408 KiB).
pub const READ_BUFFER_MAX: usize = 64 * 1024;

/// The service under [`kube::Client`], typed as kube's own builder types it.
pub type Service = BoxService<http::Request<Body>, http::Response<Box<DynBody>>, BoxError>;

/// A client builder for `config` (layers may be added before `build`).
pub fn builder(config: kube::Config) -> Result<ClientBuilder<Service>, kube::Error> {
    if config.proxy_url.is_some() || config.auth_info.exec.is_some() {
        return ClientBuilder::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let client = hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .http1_max_buf_size(READ_BUFFER_MAX)
        .build::<_, Body>(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(client)
        .map_response(|res| res.map(|body| Box::new(body.map_err(BoxError::from)) as Box<DynBody>))
        .boxed();
    Ok(ClientBuilder::new(service, config.default_namespace))
}
