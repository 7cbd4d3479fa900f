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
