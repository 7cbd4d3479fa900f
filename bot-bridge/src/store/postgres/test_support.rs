use ops::Secret;
use tokio_postgres::NoTls;

use super::{db, StoreError};

/// The variable naming the test server (a superuser URL).
pub const URL_VAR: &str = "AGENTMON_TEST_POSTGRES_URL";

/// The test server's URL, or `None` after printing why tests skip.
pub fn server_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            eprintln!(
                "skipped: {URL_VAR} is unset (scripts/test starts a throw-away Postgres \
                 and sets it)"
            );
            None
        }
    }
}

/// Creates an empty database on the test server and returns its URL, or
/// `None` when no server is configured.
pub async fn fresh_database() -> Result<Option<Secret<String>>, StoreError> {
    let Some(admin) = server_url() else {
        return Ok(None);
    };
    let (client, connection) = tokio_postgres::connect(&admin, NoTls).await.map_err(db)?;
    let driver = tokio::spawn(connection);
    let name = format!("agentmon_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(db)?;
    drop(client);
    let _ = driver.await;
    let mut url =
        url::Url::parse(&admin).map_err(|e| StoreError::Database(format!("{URL_VAR}: {e}")))?;
    url.set_path(&name);
    Ok(Some(Secret::new(url.to_string())))
}
