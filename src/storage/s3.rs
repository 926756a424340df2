//! Tables on S3 (`s3://bucket/prefix`, or `s3a://`) through object_store's S3 client.
//!
//! Input: the table URL and the usual `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for an S3-compatible server,
//! `AWS_ALLOW_HTTP=true` for one without TLS, …). Output: the object store and log store
//! the Delta table uses. Invariants: commits are conditional puts (`If-None-Match: *`), so
//! two writers can never both write one version of the log and no lock service is needed.

use std::sync::{Arc, Once};

use deltalake::DeltaResult;
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::{DeltaTableError, Path};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use url::Url;

/// The S3 schemes spanlake opens.
const SCHEMES: [&str; 2] = ["s3://", "s3a://"];

struct S3Stores;

impl ObjectStoreFactory for S3Stores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder = AmazonS3Builder::from_env()
            .with_url(url.as_str())
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        for (key, value) in &config.raw {
            if let Ok(key) = key.to_ascii_lowercase().parse() {
                builder = builder.with_config(key, value);
            }
        }
        let store = builder
            .build()
            .map_err(|e| DeltaTableError::generic(format!("S3 store for {url}: {e}")))?;
        let prefix = Path::from_url_path(url.path())
            .map_err(|e| DeltaTableError::generic(format!("S3 path of {url}: {e}")))?;
        Ok((Arc::new(store), prefix))
    }
}

struct S3Logs;

impl LogStoreFactory for S3Logs {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Registers the S3 schemes with the Delta library (once per process).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in SCHEMES {
            let url = Url::parse(scheme).expect("a scheme URL");
            object_store_factories().insert(url.clone(), Arc::new(S3Stores));
            logstore_factories().insert(url, Arc::new(S3Logs));
        }
    });
}
