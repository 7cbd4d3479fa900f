use super::*;

fn key(t: &str, a: &str, s: &str) -> RunKey {
    RunKey {
        task_id: t.into(),
        attempt: a.into(),
        short_id: s.into(),
    }
}

#[test]
fn channel_names_follow_discord_rules() {
    assert_eq!(channel_name(&key("T-42", "1", "ab12")), "run-t-42-1-ab12");
    assert_eq!(
        channel_name(&key("Fix  bug!!", "2", "x_y")),
        "run-fix-bug-2-x-y"
    );
    assert_eq!(channel_name(&key("--Ünï--", "3", "-")), "run-n-3");
    let long = channel_name(&key(&"a".repeat(300), "1", "z"));
    assert_eq!(long.len(), 100);
    assert!(long
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    let edge = channel_name(&key(&format!("{}-b", "a".repeat(94)), "1", "z"));
    assert!(!edge.ends_with('-'), "{edge}");
}

fn cat(id: &str, name: &str) -> Channel {
    Channel {
        id: id.into(),
        name: name.into(),
        kind: kind::GUILD_CATEGORY,
        parent_id: None,
    }
}

fn children(parent: &str, n: usize, from: usize) -> Vec<Channel> {
    (0..n)
        .map(|i| Channel {
            id: format!("c{}", from + i),
            name: "x".into(),
            kind: kind::GUILD_TEXT,
            parent_id: Some(parent.into()),
        })
        .collect()
}

#[test]
fn placement_overflows_into_numbered_categories() {
    assert_eq!(
        place(&[], "Agent Runs", MAX_CHANNELS_PER_GUILD).unwrap(),
        Placement::Create {
            name: "Agent Runs".into(),
            index: 1
        }
    );
    let mut g = vec![cat("1", "Agent Runs")];
    g.extend(children("1", 49, 0));
    assert!(matches!(
        place(&g, "Agent Runs", MAX_CHANNELS_PER_GUILD).unwrap(),
        Placement::Existing { index: 1, .. }
    ));
    g.extend(children("1", 1, 100));
    assert_eq!(
        place(&g, "Agent Runs", MAX_CHANNELS_PER_GUILD).unwrap(),
        Placement::Create {
            name: "Agent Runs 2".into(),
            index: 2
        }
    );
    g.push(cat("2", "Agent Runs 2"));
    assert!(matches!(
        place(&g, "Agent Runs", MAX_CHANNELS_PER_GUILD).unwrap(),
        Placement::Existing { index: 2, .. }
    ));
    // An unrelated category with a similar name is not part of the family.
    assert_eq!(category_index("Agent Runs", "Agent Runs Old"), None);
    assert_eq!(category_index("Agent Runs", "Agent Runs 1"), None);
}

#[test]
fn full_guild_is_reported() {
    let mut g = vec![cat("1", "Agent Runs")];
    g.extend(children("1", 50, 0));
    g.extend(children("other", 449, 1000));
    assert_eq!(g.len(), 500);
    assert!(matches!(
        place(&g, "Agent Runs", MAX_CHANNELS_PER_GUILD),
        Err(RunsError::GuildFull)
    ));
    g.pop();
    assert!(matches!(
        place(&g, "Agent Runs", MAX_CHANNELS_PER_GUILD),
        Err(RunsError::GuildFull)
    ));
    g.pop();
    assert!(matches!(
        place(&g, "Agent Runs", MAX_CHANNELS_PER_GUILD),
        Ok(Placement::Create { .. })
    ));
    // GUILD_CHANNEL_LIMIT raised (a fake Discord for a measurement).
    g.extend(children("other", 10, 5000));
    assert!(matches!(
        place(&g, "Agent Runs", 1000),
        Ok(Placement::Create { .. })
    ));
}

use crate::app::fixture;
use crate::app::fixture::owner;
use crate::guild::memory::MockDiscord;
use crate::guild::perm;

fn new_run(task: &str, short: &str) -> NewRun {
    NewRun {
        task_id: task.into(),
        attempt: AttemptValue::Number(1),
        short_id: short.into(),
        input_url: Some("http://10.0.0.1:8081".into()),
        heartbeats: false,
    }
}

#[tokio::test]
async fn provisioning_is_idempotent_and_channels_are_read_only() {
    let (state, discord) = fixture::state(fixture::settings());
    let (a, created) = state
        .provision(new_run("T-1", "ab"), &owner())
        .await
        .unwrap();
    assert!(created);
    let (b, created) = state
        .provision(new_run("T-1", "ab"), &owner())
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(a.run_id, b.run_id);
    assert_eq!(a.channel_id, b.channel_id);
    assert_eq!(a.webhook_url.expose(), b.webhook_url.expose());
    assert_eq!(a.input_secret.expose(), b.input_secret.expose());
    assert_eq!(a.input_secret.expose().len(), 64);
    assert!(a
        .webhook_url
        .expose()
        .starts_with("http://discord.test/api/v10/webhooks/"));
    discord.with(|s| {
        let ch = &s.channels[&a.channel_id];
        assert_eq!(ch.name, "run-t-1-1-ab");
        let parent = &s.channels[ch.parent_id.as_ref().unwrap()];
        assert_eq!(parent.name, "Agent Runs");
        let ow = &s.overwrites[&a.channel_id][0];
        assert_eq!(ow.id, fixture::GUILD);
        assert_eq!(ow.allow & perm::VIEW_CHANNEL, perm::VIEW_CHANNEL);
        assert_eq!(ow.deny & perm::SEND_MESSAGES, perm::SEND_MESSAGES);
        assert_eq!(s.webhooks.len(), 1);
    });
}

#[tokio::test]
async fn a_deleted_webhook_or_channel_is_replaced() {
    let (state, discord) = fixture::state(fixture::settings());
    let (a, _) = state.provision(new_run("t", "x"), &owner()).await.unwrap();
    discord.with(|s| s.webhooks.clear());
    let (b, created) = state.provision(new_run("t", "x"), &owner()).await.unwrap();
    assert!(!created);
    assert_eq!(a.channel_id, b.channel_id);
    assert_ne!(a.webhook_url.expose(), b.webhook_url.expose());
    discord.with(|s| s.channels.remove(&b.channel_id));
    let (c, _) = state.provision(new_run("t", "x"), &owner()).await.unwrap();
    assert_ne!(c.channel_id, b.channel_id);
    assert_eq!(c.run_id, a.run_id);
    discord.with(|s| assert!(s.webhooks.values().any(|ch| *ch == c.channel_id)));
}

#[tokio::test]
async fn the_51st_run_goes_to_an_overflow_category() {
    let (state, discord) = fixture::state(fixture::settings());
    let mut last = None;
    for i in 0..51 {
        last = Some(
            state
                .provision(new_run("t", &format!("s{i}")), &owner())
                .await
                .unwrap()
                .0,
        );
    }
    let last = last.unwrap();
    discord.with(|s| {
        let parent = s.channels[&last.channel_id].parent_id.clone().unwrap();
        assert_eq!(s.channels[&parent].name, "Agent Runs 2");
    });
    let cats = state.store().categories().await.unwrap();
    assert_eq!(cats.len(), 2);
    assert_eq!(cats[1].index, 2);
}

#[tokio::test]
async fn a_full_guild_is_refused_with_guild_full() {
    let (state, discord) = fixture::state(fixture::settings());
    discord.with(|s| {
        for i in 0..500 {
            s.channels.insert(
                format!("x{i}"),
                Channel {
                    id: format!("x{i}"),
                    name: "other".into(),
                    kind: kind::GUILD_TEXT,
                    parent_id: None,
                },
            );
        }
    });
    let err = state
        .provision(new_run("t", "a"), &owner())
        .await
        .unwrap_err();
    assert!(matches!(err, RunsError::GuildFull), "{err}");
}

#[tokio::test]
async fn complete_revokes_the_webhook_once() {
    let (state, discord) = fixture::state(fixture::settings());
    let (a, _) = state.provision(new_run("t", "a"), &owner()).await.unwrap();
    let summary = serde_json::json!({"cost": 1.5});
    let run = state
        .complete(&a.run_id, Some(summary.clone()), &owner())
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.archive_due_at, Some(run.completed_at.unwrap() + 1));
    assert!(run.webhook_token.is_none());
    discord.with(|s| assert!(s.webhooks.is_empty()));
    let again = state.complete(&a.run_id, None, &owner()).await.unwrap();
    assert_eq!(again.summary, Some(summary));
    let deletes = discord.with(|s| {
        s.calls
            .iter()
            .filter(|c| c.starts_with("delete_webhook"))
            .count()
    });
    assert_eq!(deletes, 1);
    assert!(matches!(
        state.provision(new_run("t", "a"), &owner()).await,
        Err(RunsError::RunFinished)
    ));
    assert!(matches!(
        state.complete("nope", None, &owner()).await,
        Err(RunsError::NotFound)
    ));
}

fn thread_state() -> (AppState, std::sync::Arc<crate::guild::memory::MockDiscord>) {
    let mut settings = fixture::settings();
    settings.run_container = RunContainer::Thread;
    settings.thread_parent_channel_id = Some("555".into());
    let (state, discord) = fixture::state(settings);
    discord.with(|s| {
        s.channels.insert(
            "555".into(),
            Channel {
                id: "555".into(),
                name: "runs".into(),
                kind: kind::GUILD_TEXT,
                parent_id: None,
            },
        )
    });
    (state, discord)
}

#[tokio::test]
async fn thread_mode_gives_each_run_its_own_webhook_revoked_at_completion() {
    let (state, discord) = thread_state();
    let (a, _) = state.provision(new_run("t", "a"), &owner()).await.unwrap();
    let (b, _) = state.provision(new_run("t", "b"), &owner()).await.unwrap();
    assert_ne!(a.channel_id, b.channel_id);
    assert!(a
        .webhook_url
        .expose()
        .ends_with(&format!("?thread_id={}", a.channel_id)));
    let hook_of = |url: &str| url.split('/').nth(6).unwrap_or_default().to_owned();
    let (ha, hb) = (
        hook_of(a.webhook_url.expose()),
        hook_of(b.webhook_url.expose()),
    );
    assert_ne!(ha, hb, "runs share a webhook");
    discord.with(|s| {
        assert_eq!(s.webhooks.len(), 2);
        assert_eq!(s.channels[&a.channel_id].kind, kind::PUBLIC_THREAD);
    });
    // Completing A revokes A's URL only.
    state.complete(&a.run_id, None, &owner()).await.unwrap();
    discord.with(|s| {
        assert!(
            !s.webhooks.contains_key(&ha),
            "A's webhook survived completion"
        );
        assert!(s.webhooks.contains_key(&hb));
    });
}

#[tokio::test]
async fn thread_mode_past_the_webhook_limit_is_a_clear_error() {
    let (state, _) = thread_state();
    for i in 0..crate::guild::MAX_WEBHOOKS_PER_CHANNEL {
        state
            .provision(new_run("t", &format!("s{i}")), &owner())
            .await
            .unwrap();
    }
    let err = state
        .provision(new_run("t", "one-too-many"), &owner())
        .await
        .unwrap_err();
    assert!(matches!(err, RunsError::WebhookLimit), "{err}");
    // A completed run frees its slot.
    let first = state
        .store()
        .find_by_key(RunKey {
            task_id: "t".into(),
            attempt: "1".into(),
            short_id: "s0".into(),
        })
        .await
        .unwrap()
        .unwrap();
    state.complete(&first.run_id, None, &owner()).await.unwrap();
    state
        .provision(new_run("t", "one-too-many"), &owner())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_run_belongs_to_the_caller_that_created_it() {
    let (state, _) = fixture::state(fixture::settings());
    let (a, created) = state.provision(new_run("t", "a"), &owner()).await.unwrap();
    assert!(created);
    assert!(a.run_token.is_none(), "a proposed token is not echoed");
    for intruder in [
        Caller::Anonymous,
        Caller::RunToken(Secret::new("intruder-token-".repeat(3))),
    ] {
        let err = state
            .provision(new_run("t", "a"), &intruder)
            .await
            .unwrap_err();
        assert!(matches!(err, RunsError::Forbidden(_)), "{err}");
        let err = state
            .complete(&a.run_id, None, &intruder)
            .await
            .unwrap_err();
        assert!(matches!(err, RunsError::Forbidden(_)), "{err}");
    }
    // input_url is fixed at creation, even for the owner.
    let mut moved = new_run("t", "a");
    moved.input_url = Some("http://10.9.9.9:8081".into());
    let err = state.provision(moved, &owner()).await.unwrap_err();
    assert!(err.to_string().contains("fixed"), "{err}");
    // Without a proposed token, bot-bridge issues one, once.
    let (b, _) = state
        .provision(new_run("t", "b"), &Caller::Anonymous)
        .await
        .unwrap();
    let token = b.run_token.clone().expect("a token for the creator");
    assert!(token.expose().len() >= crate::access::MIN_RUN_TOKEN);
    let (again, created) = state
        .provision(new_run("t", "b"), &Caller::RunToken(token.clone()))
        .await
        .unwrap();
    assert!(!created && again.run_token.is_none());
    assert_eq!(again.input_secret.expose(), b.input_secret.expose());
    let stored = state
        .store()
        .get_run(b.run_id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.token_hash.as_deref(),
        Some(crate::access::hash_token(&token).as_str())
    );
    state
        .complete(&b.run_id, None, &Caller::RunToken(token))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_run_from_before_run_tokens_is_adopted_once() {
    let (state, _) = fixture::state(fixture::settings());
    let (a, _) = state.provision(new_run("t", "a"), &owner()).await.unwrap();
    let mut legacy = state
        .store()
        .get_run(a.run_id.clone())
        .await
        .unwrap()
        .unwrap();
    legacy.token_hash = None;
    state.store().update_run(legacy).await.unwrap();
    let (adopted, _) = state
        .provision(new_run("t", "a"), &Caller::Anonymous)
        .await
        .unwrap();
    let token = adopted.run_token.expect("the adopter gets a token");
    assert!(matches!(
        state.provision(new_run("t", "a"), &Caller::Anonymous).await,
        Err(RunsError::Forbidden(_))
    ));
    state
        .provision(new_run("t", "a"), &Caller::RunToken(token))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_identities_are_rejected() {
    let (state, _) = fixture::state(fixture::settings());
    let mut r = new_run("", "a");
    assert!(matches!(
        state.provision(r.clone(), &owner()).await,
        Err(RunsError::BadRequest(_))
    ));
    r.task_id = "t".into();
    r.input_url = Some("http://169.254.169.254".into());
    assert!(matches!(
        state.provision(r, &owner()).await,
        Err(RunsError::BadRequest(_))
    ));
}

/// What a replica killed between Discord's answer and the store write leaves:
/// the stored run without the channel (or webhook) Discord holds.
async fn forget_discord_objects(state: &AppState, run_id: &str, channel_too: bool) {
    let mut run = state
        .store()
        .get_run(run_id.to_owned())
        .await
        .unwrap()
        .unwrap();
    if channel_too {
        run.channel_id = None;
    }
    run.webhook_id = None;
    run.webhook_token = None;
    state.store().update_run(run).await.unwrap();
}

fn run_channels(discord: &MockDiscord, name: &str) -> Vec<String> {
    discord.with(|s| {
        s.channels
            .values()
            .filter(|c| c.name == name)
            .map(|c| c.id.clone())
            .collect()
    })
}

#[tokio::test]
async fn a_crash_before_the_store_write_leaves_no_orphan_channel_or_webhook() {
    let (state, discord) = fixture::state(fixture::settings());
    let (a, _) = state.provision(new_run("t", "x"), &owner()).await.unwrap();

    // Killed after Discord created the channel and its webhook.
    forget_discord_objects(&state, &a.run_id, true).await;
    let (b, created) = state.provision(new_run("t", "x"), &owner()).await.unwrap();
    assert!(!created);
    assert_eq!(b.channel_id, a.channel_id, "the orphan channel is adopted");
    assert_eq!(b.webhook_url.expose(), a.webhook_url.expose());
    assert_eq!(
        run_channels(&discord, "run-t-1-x"),
        vec![a.channel_id.clone()]
    );
    discord.with(|s| assert_eq!(s.webhooks.len(), 1));

    // Killed after Discord created the webhook of a stored channel.
    forget_discord_objects(&state, &a.run_id, false).await;
    let (c, _) = state.provision(new_run("t", "x"), &owner()).await.unwrap();
    assert_eq!(c.webhook_url.expose(), a.webhook_url.expose());
    discord.with(|s| assert_eq!(s.webhooks.len(), 1));
    let stored = state.stored_run(&a.run_id).await.unwrap();
    assert_eq!(stored.channel_id.as_deref(), Some(a.channel_id.as_str()));
    assert!(stored.webhook_id.is_some());
}

#[tokio::test]
async fn only_an_unbound_run_channel_in_the_runs_categories_is_adopted() {
    let (state, discord) = fixture::state(fixture::settings());
    // "x_y" and "x-y" are two runs with one channel name: the second never
    // takes the first's channel.
    let (a, _) = state
        .provision(new_run("t", "x_y"), &owner())
        .await
        .unwrap();
    let (b, _) = state
        .provision(new_run("t", "x-y"), &owner())
        .await
        .unwrap();
    assert_ne!(a.channel_id, b.channel_id);
    // A channel with a run's name outside the runs categories is someone
    // else's (or an archived one): not adopted either.
    discord.with(|s| {
        s.channels.insert(
            "elsewhere".into(),
            Channel {
                id: "elsewhere".into(),
                name: "run-t-1-z".into(),
                kind: kind::GUILD_TEXT,
                parent_id: None,
            },
        );
    });
    let (c, _) = state.provision(new_run("t", "z"), &owner()).await.unwrap();
    assert_ne!(c.channel_id, "elsewhere");
    assert_eq!(run_channels(&discord, "run-t-1-z").len(), 2);
    // A freshly created channel is not asked for webhooks to adopt.
    let lists = discord.with(|s| {
        s.calls
            .iter()
            .filter(|c| c.starts_with("list_webhooks"))
            .count()
    });
    assert_eq!(lists, 0);
}
