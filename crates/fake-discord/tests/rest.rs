//! The bot REST routes bot-bridge uses, against the fake in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fake_discord::{FakeConfig, FakeDiscord};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Bot {
    http: reqwest::Client,
    base: String,
    token: &'static str,
}

impl Bot {
    fn new(fake: &FakeDiscord) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: fake.api_base(),
            token: "bot-token",
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Bot {}", self.token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        assert!(
            r.headers().contains_key("x-ratelimit-bucket") || status == StatusCode::UNAUTHORIZED
        );
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

fn fast() -> FakeConfig {
    FakeConfig {
        rest_limit: 1000,
        global_per_second: 1000,
        ..FakeConfig::default()
    }
}

#[tokio::test]
async fn a_category_holds_50_channels_and_the_51st_is_refused() {
    let fake = FakeDiscord::start(fast()).await.unwrap();
    let bot = Bot::new(&fake);
    let (status, cat) = bot
        .post(
            "/guilds/1/channels",
            json!({"name": "Agent Runs", "type": 4}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let cat_id = cat["id"].as_str().unwrap().to_owned();
    let overwrites = json!([{"id": "1", "type": 0, "allow": "66560", "deny": "2048"}]);
    for i in 0..50 {
        let (status, ch) = bot
            .post(
                "/guilds/1/channels",
                json!({"name": format!("run-{i}"), "type": 0, "parent_id": cat_id, "permission_overwrites": overwrites}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "channel {i}: {ch}");
        assert_eq!(ch["parent_id"], json!(cat_id));
        assert_eq!(ch["permission_overwrites"][0]["deny"], "2048");
    }
    let (status, body) = bot
        .post(
            "/guilds/1/channels",
            json!({"name": "run-50", "parent_id": cat_id}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 50035);
    assert_eq!(
        body["errors"]["parent_id"]["_errors"][0]["message"],
        "Maximum number of channels in category reached (50)"
    );
    // Without a parent (or in a second category) it works.
    let (status, _) = bot
        .post("/guilds/1/channels", json!({"name": "run-50"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, list) = bot
        .call(reqwest::Method::GET, "/guilds/1/channels", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 52);
    assert_eq!(
        fake.stats().rest_rejected_400["POST /guilds/{guild_id}/channels"],
        1
    );
}

#[tokio::test]
async fn a_guild_holds_500_channels() {
    let fake = FakeDiscord::start(fast()).await.unwrap();
    for i in 0..500 {
        fake.create_channel(&format!("c{i}"), 0, None);
    }
    let bot = Bot::new(&fake);
    let (status, body) = bot
        .post("/guilds/1/channels", json!({"name": "one-more"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 30013);
}

#[tokio::test]
async fn a_raised_guild_channel_limit_takes_more_and_no_more() {
    let fake = FakeDiscord::start(FakeConfig {
        guild_channel_limit: 502,
        ..fast()
    })
    .await
    .unwrap();
    for i in 0..500 {
        fake.create_channel(&format!("c{i}"), 0, None);
    }
    let bot = Bot::new(&fake);
    for expected in [
        StatusCode::CREATED,
        StatusCode::CREATED,
        StatusCode::BAD_REQUEST,
    ] {
        let (status, body) = bot
            .post("/guilds/1/channels", json!({"name": "one-more"}))
            .await;
        assert_eq!(status, expected, "{body}");
    }
}

#[tokio::test]
async fn channel_names_and_types_are_checked() {
    let fake = FakeDiscord::start(fast()).await.unwrap();
    let bot = Bot::new(&fake);
    for bad in [
        json!({"name": "Run 1"}),
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "ok", "type": 2}),
        json!({"name": "ok", "parent_id": "12345"}),
    ] {
        let (status, body) = bot.post("/guilds/1/channels", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["code"], 50035, "{bad}");
    }
    // Category names are free text.
    let (status, _) = bot
        .post(
            "/guilds/1/channels",
            json!({"name": "Agent Runs 2", "type": 4}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = bot.post("/guilds/2/channels", json!({"name": "x"})).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::NOT_FOUND, json!(10004))
    );
}

#[tokio::test]
async fn channels_move_webhooks_die_with_their_channel_threads_archive() {
    let fake = FakeDiscord::start(fast()).await.unwrap();
    let bot = Bot::new(&fake);
    let (_, runs) = bot
        .post(
            "/guilds/1/channels",
            json!({"name": "Agent Runs", "type": 4}),
        )
        .await;
    let (_, archive) = bot
        .post(
            "/guilds/1/channels",
            json!({"name": "Archived Runs", "type": 4}),
        )
        .await;
    let (_, ch) = bot
        .post(
            "/guilds/1/channels",
            json!({"name": "run-a-1-x", "parent_id": runs["id"]}),
        )
        .await;
    let ch_id = ch["id"].as_str().unwrap();

    let (status, hook) = bot
        .post(
            &format!("/channels/{ch_id}/webhooks"),
            json!({"name": "agentmon"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hook["type"], 1);
    assert_eq!(hook["channel_id"], json!(ch_id));
    let url = format!(
        "{}/webhooks/{}/{}",
        fake.api_base(),
        hook["id"].as_str().unwrap(),
        hook["token"].as_str().unwrap()
    );
    let http = reqwest::Client::new();
    let send = || http.post(&url).json(&json!({"content": "x"})).send();
    assert_eq!(send().await.unwrap().status(), StatusCode::NO_CONTENT);
    let (status, _) = bot
        .post(
            &format!("/channels/{ch_id}/webhooks"),
            json!({"name": "Discord bot"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, moved) = bot
        .call(
            reqwest::Method::PATCH,
            &format!("/channels/{ch_id}"),
            Some(json!({"parent_id": archive["id"], "permission_overwrites": []})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(moved["parent_id"], archive["id"]);
    let (status, got) = bot
        .call(reqwest::Method::GET, &format!("/channels/{ch_id}"), None)
        .await;
    assert_eq!(
        (status, got["parent_id"].clone()),
        (StatusCode::OK, archive["id"].clone())
    );

    let (status, thread) = bot
        .post(
            &format!("/channels/{ch_id}/threads"),
            json!({"name": "run 1", "type": 11}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(thread["type"], 11);
    assert_eq!(thread["parent_id"], json!(ch_id));
    let thread_id = thread["id"].as_str().unwrap();
    let (status, t) = bot
        .call(
            reqwest::Method::PATCH,
            &format!("/channels/{thread_id}"),
            Some(json!({"archived": true, "locked": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t["thread_metadata"]["locked"], true);
    let r = http
        .post(format!("{url}?thread_id={thread_id}"))
        .json(&json!({"content": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let (status, _) = bot
        .call(reqwest::Method::DELETE, &format!("/channels/{ch_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let (status, body) = bot
        .call(reqwest::Method::GET, &format!("/channels/{ch_id}"), None)
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::NOT_FOUND, json!(10003))
    );
    let (status, _) = bot
        .call(reqwest::Method::DELETE, &format!("/channels/{ch_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleting_a_webhook_makes_executes_404() {
    let fake = FakeDiscord::start(fast()).await.unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let bot = Bot::new(&fake);
    let (status, got) = bot
        .call(
            reqwest::Method::GET,
            &format!("/webhooks/{}", hook.id),
            None,
        )
        .await;
    assert_eq!(
        (status, got["id"].clone()),
        (StatusCode::OK, json!(hook.id))
    );
    let (status, _) = bot
        .call(
            reqwest::Method::DELETE,
            &format!("/webhooks/{}", hook.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let r = reqwest::Client::new()
        .post(&hook.url)
        .json(&json!({"content": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (status, _) = bot
        .call(
            reqwest::Method::GET,
            &format!("/webhooks/{}", hook.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_bot_token_is_required_and_checked() {
    let fake = FakeDiscord::start(FakeConfig {
        bot_token: Some("right".into()),
        ..fast()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/guilds/1/channels", fake.api_base());
    for auth in [None, Some("Bot wrong"), Some("Bearer right")] {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"message": "401: Unauthorized", "code": 0})
        );
    }
    let r = http
        .get(&url)
        .header("authorization", "Bot right")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(fake.stats().rest_unauthorized, 3);
}

#[tokio::test]
async fn rest_routes_advertise_and_enforce_buckets() {
    let fake = FakeDiscord::start(FakeConfig {
        rest_limit: 2,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/guilds/1/channels", fake.api_base());
    let get = || http.get(&url).header("authorization", "Bot t").send();
    let r = get().await.unwrap();
    assert_eq!(r.headers()["x-ratelimit-remaining"], "1");
    get().await.unwrap();
    let r = get().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["x-ratelimit-scope"], "user");
    assert_eq!(fake.stats().rest_rate_limited["user"], 1);
}

#[tokio::test]
async fn commands_are_stored_and_interaction_edits_recorded() {
    let fake = FakeDiscord::start(fast()).await.unwrap();
    let bot = Bot::new(&fake);
    let commands = json!([
        {"name": "input", "type": 1, "description": "Send text",
         "options": [{"type": 3, "name": "text", "description": "What", "required": true}]},
        {"name": "status", "type": 1, "description": "Status"}
    ]);
    let (status, echoed) = bot
        .call(
            reqwest::Method::PUT,
            "/applications/77/guilds/1/commands",
            Some(commands.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed[0]["name"], "input");
    assert_eq!(echoed[0]["application_id"], "77");
    assert_eq!(echoed[0]["guild_id"], "1");
    let id = echoed[0]["id"].clone();
    // Overwriting keeps ids per name.
    let (_, again) = bot
        .call(
            reqwest::Method::PUT,
            "/applications/77/guilds/1/commands",
            Some(commands),
        )
        .await;
    assert_eq!(again[0]["id"], id);
    let (status, _) = bot
        .call(
            reqwest::Method::PUT,
            "/applications/77/commands",
            Some(json!([{"name": "Bad Name", "description": "x"}])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // default_member_permissions is a bit set as a decimal string, or null.
    for bad in [json!(0), json!("admins"), json!(true)] {
        let (status, body) = bot
            .call(
                reqwest::Method::PUT,
                "/applications/77/commands",
                Some(json!([{"name": "x", "description": "x", "default_member_permissions": bad}])),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, echoed) = bot
        .call(
            reqwest::Method::PUT,
            "/applications/77/commands",
            Some(json!([{"name": "x", "description": "x", "default_member_permissions": "0"}])),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed[0]["default_member_permissions"], "0");
    assert_eq!(fake.commands("77", Some("1")).unwrap().len(), 2);
    let admin: Value = reqwest::get(fake.admin_url("commands"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let guild = admin
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["guild_id"] == "1")
        .unwrap();
    assert_eq!(guild["commands"].as_array().unwrap().len(), 2);

    // No bot token on interaction webhooks.
    let r = reqwest::Client::new()
        .patch(format!(
            "{}/webhooks/77/interaction-token-abc/messages/@original",
            fake.api_base()
        ))
        .json(&json!({"content": "forwarded", "allowed_mentions": {"parse": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let edits: Value = reqwest::get(fake.admin_url("interaction_edits"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(edits[0]["application_id"], "77");
    assert_eq!(edits[0]["interaction_token"], "interaction-token-abc");
    assert_eq!(edits[0]["body"]["content"], "forwarded");
}
