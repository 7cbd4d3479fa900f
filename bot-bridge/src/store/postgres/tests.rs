use super::*;

#[tokio::test]
async fn a_newer_schema_is_refused_and_reopening_is_idempotent() {
    let Some(url) = test_support::fresh_database().await.unwrap() else {
        return;
    };
    // Two replicas starting at once: the migration runs once.
    let (a, b) = tokio::join!(
        PostgresStore::connect(&url, 2),
        PostgresStore::connect(&url, 2)
    );
    let (a, _b) = (a.unwrap(), b.unwrap());
    let client = a.client().await.unwrap();
    let versions: Vec<i64> = client
        .query("SELECT version FROM schema_version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [i64::try_from(MIGRATIONS.len()).unwrap()]);
    client
        .execute("UPDATE schema_version SET version = version + 1", &[])
        .await
        .unwrap();
    let err = PostgresStore::connect(&url, 2).await.unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    assert!(err.to_string().contains("newer release"), "{err}");
}

#[tokio::test]
async fn connection_errors_do_not_show_the_password() {
    let url = Secret::new("postgres://agentmon:hunter2-secret@127.0.0.1:1/db".to_owned());
    let err = PostgresStore::connect(&url, 2).await.unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

/// A request cancelled while it waits for the provisioning lock (its client
/// gave up, or the server's request timeout) must not leave the lock to be
/// granted later to an idle pooled session that never unlocks: the other
/// replica still gets it once the holder is done.
#[tokio::test]
async fn a_cancelled_lock_wait_does_not_wedge_provisioning() {
    let Some(url) = test_support::fresh_database().await.unwrap() else {
        return;
    };
    let a = PostgresStore::connect(&url, 2).await.unwrap();
    let b = PostgresStore::connect(&url, 2).await.unwrap();
    let held = a.provision_lock().await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), b.provision_lock()).await;
    assert!(waited.is_err(), "b got the lock while a held it");
    drop(held);
    // b's pooled connections are busy with nothing; a asks again.
    tokio::time::timeout(Duration::from_secs(10), a.provision_lock())
        .await
        .expect("the lock came back to a within 10 s")
        .unwrap();
}
