//! An in-memory Discord for tests (here and in other crates): it enforces
//! the 50-per-category and 500-per-guild limits like the real one and
//! records every call, without any network.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

/// Everything the in-memory Discord holds; tests read and change it freely.
#[derive(Debug, Default)]
pub struct MockState {
    pub next_id: u64,
    pub channels: BTreeMap<String, Channel>,
    pub webhooks: BTreeMap<String, String>,
    /// Webhook id → the name it was created with.
    pub webhook_names: BTreeMap<String, String>,
    pub calls: Vec<String>,
    pub edits: Vec<Value>,
    /// Bodies posted through webhooks (closing embeds).
    pub posts: Vec<Value>,
    pub commands: Option<Value>,
    pub overwrites: BTreeMap<String, Vec<Overwrite>>,
}

/// The in-memory [`DiscordApi`].
#[derive(Debug, Default)]
pub struct MockDiscord {
    pub state: Mutex<MockState>,
}

impl MockDiscord {
    /// Runs `f` on the state (to inspect it or to simulate changes made in
    /// Discord, such as a webhook deleted by hand).
    pub fn with<T>(&self, f: impl FnOnce(&mut MockState) -> T) -> T {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

fn ready<'a, T: Send + 'a>(v: Result<T, DiscordError>) -> DiscordFuture<'a, T> {
    Box::pin(async move { v })
}

impl MockState {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{}", 1000 + self.next_id)
    }
}

impl DiscordApi for MockDiscord {
    fn list_guild_channels(&self, _guild_id: &str) -> DiscordFuture<'_, Vec<Channel>> {
        ready(Ok(self.with(|s| {
            s.calls.push("list".into());
            s.channels
                .values()
                .filter(|c| c.kind != kind::PUBLIC_THREAD)
                .cloned()
                .collect()
        })))
    }
    fn get_channel(&self, channel_id: &str) -> DiscordFuture<'_, Option<Channel>> {
        ready(Ok(self.with(|s| s.channels.get(channel_id).cloned())))
    }
    fn create_channel(
        &self,
        _guild_id: &str,
        channel: &NewChannel,
        _reason: &str,
    ) -> DiscordFuture<'_, Channel> {
        let channel = channel.clone();
        ready(self.with(|s| {
            s.calls.push(format!("create_channel {}", channel.name));
            let guild = s
                .channels
                .values()
                .filter(|c| c.kind != kind::PUBLIC_THREAD)
                .count();
            if guild >= 500 {
                return Err(DiscordError::Http {
                    status: 400,
                    code: discord::error_code::MAX_GUILD_CHANNELS,
                    message: "Maximum number of guild channels reached (500)".into(),
                });
            }
            if let Some(p) = &channel.parent_id {
                let n = s
                    .channels
                    .values()
                    .filter(|c| c.parent_id.as_deref() == Some(p))
                    .count();
                if n >= 50 {
                    return Err(DiscordError::Http {
                        status: 400,
                        code: 50035,
                        message: "Maximum number of channels in category reached (50)".into(),
                    });
                }
            }
            let id = s.id();
            let c = Channel {
                id: id.clone(),
                name: channel.name.clone(),
                kind: channel.kind,
                parent_id: channel.parent_id.clone(),
            };
            s.overwrites.insert(id.clone(), channel.overwrites.clone());
            s.channels.insert(id, c.clone());
            Ok(c)
        }))
    }
    fn modify_channel(
        &self,
        channel_id: &str,
        patch: &Value,
        _reason: &str,
    ) -> DiscordFuture<'_, ()> {
        let (channel_id, patch) = (channel_id.to_owned(), patch.clone());
        ready(self.with(|s| {
            s.calls.push(format!("modify {channel_id}"));
            let c = s
                .channels
                .get_mut(&channel_id)
                .ok_or(DiscordError::NotFound)?;
            if let Some(p) = patch.get("parent_id").and_then(Value::as_str) {
                c.parent_id = Some(p.to_owned());
            }
            Ok(())
        }))
    }
    fn delete_channel(&self, channel_id: &str, _reason: &str) -> DiscordFuture<'_, ()> {
        let channel_id = channel_id.to_owned();
        ready(self.with(|s| {
            s.calls.push(format!("delete_channel {channel_id}"));
            s.channels
                .remove(&channel_id)
                .map(|_| ())
                .ok_or(DiscordError::NotFound)
        }))
    }
    fn create_thread(
        &self,
        channel_id: &str,
        name: &str,
        _reason: &str,
    ) -> DiscordFuture<'_, Channel> {
        let (channel_id, name) = (channel_id.to_owned(), name.to_owned());
        ready(self.with(|s| {
            let id = s.id();
            let c = Channel {
                id: id.clone(),
                name,
                kind: kind::PUBLIC_THREAD,
                parent_id: Some(channel_id),
            };
            s.channels.insert(id, c.clone());
            Ok(c)
        }))
    }
    fn create_webhook(
        &self,
        channel_id: &str,
        name: &str,
        _reason: &str,
    ) -> DiscordFuture<'_, Webhook> {
        let (channel_id, name) = (channel_id.to_owned(), name.to_owned());
        ready(self.with(|s| {
            if !s.channels.contains_key(&channel_id) {
                return Err(DiscordError::NotFound);
            }
            if s.webhooks.values().filter(|c| **c == channel_id).count() >= MAX_WEBHOOKS_PER_CHANNEL
            {
                return Err(DiscordError::Http {
                    status: 400,
                    code: discord::error_code::MAX_WEBHOOKS,
                    message: "Maximum number of webhooks reached (15)".into(),
                });
            }
            let id = s.id();
            s.calls.push(format!("create_webhook {id}"));
            s.webhooks.insert(id.clone(), channel_id);
            s.webhook_names.insert(id.clone(), name);
            Ok(Webhook {
                token: Secret::new(format!("webhook-token-{id}")),
                id,
            })
        }))
    }
    fn list_channel_webhooks(&self, channel_id: &str) -> DiscordFuture<'_, Vec<ListedWebhook>> {
        let channel_id = channel_id.to_owned();
        ready(self.with(|s| {
            s.calls.push(format!("list_webhooks {channel_id}"));
            if !s.channels.contains_key(&channel_id) {
                return Err(DiscordError::NotFound);
            }
            Ok(s.webhooks
                .iter()
                .filter(|(_, c)| **c == channel_id)
                .map(|(id, _)| ListedWebhook {
                    id: id.clone(),
                    name: s.webhook_names.get(id).cloned().unwrap_or_default(),
                    incoming: true,
                    token: Some(Secret::new(format!("webhook-token-{id}"))),
                })
                .collect())
        }))
    }
    fn webhook_exists(&self, webhook_id: &str) -> DiscordFuture<'_, bool> {
        ready(Ok(self.with(|s| s.webhooks.contains_key(webhook_id))))
    }
    fn delete_webhook(&self, webhook_id: &str, _reason: &str) -> DiscordFuture<'_, ()> {
        let webhook_id = webhook_id.to_owned();
        ready(self.with(|s| {
            s.calls.push(format!("delete_webhook {webhook_id}"));
            s.webhooks
                .remove(&webhook_id)
                .map(|_| ())
                .ok_or(DiscordError::NotFound)
        }))
    }
    fn bulk_overwrite_guild_commands(
        &self,
        _application_id: &str,
        _guild_id: &str,
        commands: &Value,
    ) -> DiscordFuture<'_, ()> {
        let commands = commands.clone();
        self.with(|s| s.commands = Some(commands));
        ready(Ok(()))
    }
    fn edit_original_interaction_response(
        &self,
        _application_id: &str,
        _interaction_token: &Secret<String>,
        body: &Value,
    ) -> DiscordFuture<'_, ()> {
        let body = body.clone();
        self.with(|s| s.edits.push(body));
        ready(Ok(()))
    }
    fn execute_webhook(
        &self,
        webhook_id: &str,
        _webhook_token: &Secret<String>,
        _thread_id: Option<&str>,
        body: &Value,
    ) -> DiscordFuture<'_, ()> {
        let (webhook_id, body) = (webhook_id.to_owned(), body.clone());
        ready(self.with(|s| {
            s.calls.push(format!("execute_webhook {webhook_id}"));
            if !s.webhooks.contains_key(&webhook_id) {
                return Err(DiscordError::NotFound);
            }
            s.posts.push(body);
            Ok(())
        }))
    }
}
