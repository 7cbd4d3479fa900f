//! Finding the transcript to follow: `TRANSCRIPT_PATH`, or the newest session
//! file of the workspace's project directory (and its subagent files).
//!
//! Everything here is a synchronous look at the directory tree as it is now;
//! `ingest` decides when to look again and what to do with the answer.
//! See TRANSCRIPT_FORMAT.md §1 for the layout this encodes.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

/// Where new-layout subagent transcripts live: `<projectDir>/<sessionId>/subagents/`.
pub const SUBAGENTS_DIR: &str = "subagents";

/// Where workflow runs keep their agents' transcripts, under [`SUBAGENTS_DIR`]:
/// `workflows/<run>/agent-<id>.jsonl` (beside a `journal.jsonl`, not read).
pub const WORKFLOWS_DIR: &str = "workflows";

/// How deep under [`SUBAGENTS_DIR`] agent files are looked for (the
/// workflow layout is two levels down; the rest is margin for what comes next).
const MAX_SUBAGENT_DEPTH: usize = 4;

/// How much of a file is read to learn its `cwd` or `sessionId`.
const PROBE_BYTES: u64 = 64 * 1024;

/// How many of a foreign project directory's newest sessions are probed for `cwd`.
const PROBE_SESSIONS: usize = 3;

/// The project directory name the agent CLI uses for `workspace`: every
/// character outside `[A-Za-z0-9]` becomes `-`, one per UTF-16 unit (an emoji
/// outside the BMP becomes `--`), no collapsing.
pub fn project_dir_name(workspace: &str) -> String {
    let mut out = String::with_capacity(workspace.len());
    for c in workspace.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.extend(std::iter::repeat_n('-', c.len_utf16()));
        }
    }
    out
}

/// `agent-<id>.jsonl` → `<id>`.
pub fn agent_id(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let id = name.strip_prefix("agent-")?.strip_suffix(".jsonl")?;
    (!id.is_empty()).then_some(id)
}

/// A `*.jsonl` that is a session of its own (not an `agent-*.jsonl`).
pub fn is_session_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.ends_with(".jsonl") && name.len() > ".jsonl".len() && !name.starts_with("agent-")
}

/// A file found on disk, with what was seen of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub modified: SystemTime,
    pub len: u64,
}

fn stat(path: PathBuf) -> Option<Found> {
    let meta = fs::metadata(&path).ok()?;
    meta.is_file().then(|| Found {
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        len: meta.len(),
        path,
    })
}

fn list(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<Found> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| keep(p))
        .filter_map(stat)
        .collect()
}

/// The session files directly in `dir`.
pub fn session_files(dir: &Path) -> Vec<Found> {
    list(dir, is_session_file)
}

/// The most recently modified of `files` (ties: the greater path, so the
/// choice is stable).
pub fn newest(files: Vec<Found>) -> Option<Found> {
    files
        .into_iter()
        .max_by(|a, b| (a.modified, &a.path).cmp(&(b.modified, &b.path)))
}

/// The answer to "which session file is active".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Session {
        project_dir: PathBuf,
        session: Found,
    },
    /// Nothing to follow yet; the detail says what is missing.
    Waiting(String),
}

/// Finds the active session of `workspace` under `projects_dir`: the newest
/// session file of the project directory named after the workspace, or of any
/// project directory whose records' `cwd` is the workspace (the name mapping
/// is lossy and long names are hashed).
pub fn find_session(projects_dir: &Path, workspace: &str) -> Lookup {
    if !projects_dir.is_dir() {
        return Lookup::Waiting(format!("{} does not exist yet", projects_dir.display()));
    }
    let named = projects_dir.join(project_dir_name(workspace));
    if let Some(session) = newest(session_files(&named)) {
        return Lookup::Session {
            project_dir: named,
            session,
        };
    }
    let best = project_dirs_by_cwd(projects_dir, workspace, &named)
        .into_iter()
        .filter_map(|dir| newest(session_files(&dir)).map(|s| (dir, s)))
        .max_by(|a, b| (a.1.modified, &a.1.path).cmp(&(b.1.modified, &b.1.path)));
    match best {
        Some((project_dir, session)) => Lookup::Session {
            project_dir,
            session,
        },
        None => Lookup::Waiting(format!(
            "no session file in {} (or any project directory with cwd {workspace})",
            named.display()
        )),
    }
}

/// Project directories (other than `skip`) whose sessions record `cwd == workspace`.
fn project_dirs_by_cwd(projects_dir: &Path, workspace: &str, skip: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(projects_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p != skip && p.is_dir())
        .filter(|dir| {
            let mut sessions = session_files(dir);
            sessions.sort_by_key(|s| std::cmp::Reverse(s.modified));
            sessions
                .iter()
                .take(PROBE_SESSIONS)
                .any(|s| probe(&s.path).cwds.iter().any(|c| same_dir(c, workspace)))
        })
        .collect()
}

fn same_dir(a: &str, b: &str) -> bool {
    let trim = |s: &str| -> String {
        let t = s.trim_end_matches('/');
        if t.is_empty() { s } else { t }.to_owned()
    };
    trim(a) == trim(b)
}

/// The envelope fields discovery needs. Only `sessionId` is mapped: some lines
/// also carry `session_id` with another value (TRANSCRIPT_FORMAT.md §6 #9).
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
    cwd: Option<String>,
}

#[derive(Debug, Default)]
struct Probe {
    session_id: Option<String>,
    cwds: Vec<String>,
}

/// Reads the complete lines within the first `PROBE_BYTES` of `path`.
fn probe(path: &Path) -> Probe {
    let mut head = Vec::new();
    let mut out = Probe::default();
    let Ok(crate::tail::Opened::File(f, _)) = crate::tail::open_regular(path) else {
        return out;
    };
    if f.take(PROBE_BYTES).read_to_end(&mut head).is_err() {
        return out;
    }
    let complete = memchr::memrchr(b'\n', &head).map_or(0, |i| i + 1);
    for line in head[..complete].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(env) = serde_json::from_slice::<Envelope>(line) else {
            continue;
        };
        if out.session_id.is_none() {
            out.session_id = env.session_id;
        }
        if let Some(cwd) = env.cwd {
            if !out.cwds.contains(&cwd) {
                out.cwds.push(cwd);
            }
        }
    }
    out
}

/// Which layout a subagent file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `<projectDir>/agent-<id>.jsonl`, shared by all sessions of the project.
    Flat,
    /// `<projectDir>/<sessionId>/subagents/[…/]agent-<id>.jsonl`, at any
    /// depth (workflow runs: `subagents/workflows/<run>/agent-<id>.jsonl`).
    Nested,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubagentFile {
    pub path: PathBuf,
    pub agent_id: String,
    pub layout: Layout,
    /// The workflow run it belongs to (`subagents/workflows/<run>/…`).
    pub workflow: Option<String>,
}

/// Every `agent-<id>.jsonl` under `dir` (the session's `subagents/`), at
/// any depth up to [`MAX_SUBAGENT_DEPTH`], with the workflow run its path
/// names. Symlinked directories are not entered; a non-directory entry with
/// an agent file name is returned whatever its type, so that a FIFO or device
/// is reported (and never opened) by the follower rather than skipped silently.
/// Directory entry types come from `readdir`: no `stat` per file.
pub fn nested_agent_files(dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let mut out = Vec::new();
    walk_agents(dir, &mut Vec::new(), &mut out);
    out
}

fn walk_agents(dir: &Path, rel: &mut Vec<String>, out: &mut Vec<(PathBuf, Option<String>)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let Ok(ty) = e.file_type() else { continue };
        let path = e.path();
        if ty.is_dir() {
            if rel.len() + 1 < MAX_SUBAGENT_DEPTH {
                if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    rel.push(name.to_owned());
                    walk_agents(&path, rel, out);
                    rel.pop();
                }
            }
        } else if agent_id(&path).is_some() {
            let workflow = match rel.as_slice() {
                [w, run, ..] if w == WORKFLOWS_DIR => Some(run.clone()),
                _ => None,
            };
            out.push((path, workflow));
        }
    }
}

/// The session id of a session file: its name without `.jsonl`.
pub fn session_id(session: &Path) -> Option<&str> {
    session.file_name()?.to_str()?.strip_suffix(".jsonl")
}

/// The directory of new-layout subagent files of `session`.
pub fn subagents_dir(project_dir: &Path, session: &Path) -> Option<PathBuf> {
    Some(project_dir.join(session_id(session)?).join(SUBAGENTS_DIR))
}

/// Remembers which flat-layout agent files belong to which session, so each is
/// probed once it has a complete line, not on every scan.
#[derive(Debug, Default)]
pub struct SubagentScanner {
    owner: HashMap<PathBuf, String>,
}

impl SubagentScanner {
    /// Subagent files of `session`: every nested one, and the flat ones whose
    /// records carry the session's id (agent records carry the parent's
    /// `sessionId`). A flat file without a complete line yet is left for a
    /// later scan.
    pub fn scan(&mut self, project_dir: &Path, session: &Path) -> Vec<SubagentFile> {
        let Some(sid) = session_id(session) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for f in list(project_dir, |p| agent_id(p).is_some()) {
            let owner = match self.owner.get(&f.path) {
                Some(o) => o.clone(),
                None => match probe(&f.path).session_id {
                    Some(o) => {
                        self.owner.insert(f.path.clone(), o.clone());
                        o
                    }
                    None => continue,
                },
            };
            if owner == sid {
                if let Some(id) = agent_id(&f.path) {
                    out.push(SubagentFile {
                        agent_id: id.to_owned(),
                        path: f.path,
                        layout: Layout::Flat,
                        workflow: None,
                    });
                }
            }
        }
        if let Some(dir) = subagents_dir(project_dir, session) {
            for (path, workflow) in nested_agent_files(&dir) {
                if let Some(id) = agent_id(&path) {
                    out.push(SubagentFile {
                        agent_id: id.to_owned(),
                        path,
                        layout: Layout::Nested,
                        workflow,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

/// `description` (else a workflow agent's `label`) from
/// `agent-<id>.meta.json` beside the agent file, if any. The meta file is
/// opened without blocking and only when it is a regular file: the agent can
/// put a FIFO there.
pub fn meta_description(agent_file: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct Meta {
        description: Option<String>,
        label: Option<String>,
    }
    let meta = agent_file.with_extension("meta.json");
    let crate::tail::Opened::File(f, _) = crate::tail::open_regular(&meta).ok()? else {
        return None;
    };
    let mut bytes = Vec::new();
    f.take(PROBE_BYTES).read_to_end(&mut bytes).ok()?;
    let meta = serde_json::from_slice::<Meta>(&bytes).ok()?;
    meta.description
        .filter(|d| !d.trim().is_empty())
        .or(meta.label.filter(|l| !l.trim().is_empty()))
}

/// Every transcript file that exists now under `projects_dir` (sessions and
/// subagent files of every project) with its size: what existed at start-up.
pub fn snapshot(projects_dir: &Path) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    let Ok(projects) = fs::read_dir(projects_dir) else {
        return out;
    };
    for project in projects.filter_map(Result::ok).map(|e| e.path()) {
        snapshot_project(&project, &mut out);
    }
    out
}

/// Adds the transcript files of one project directory to `out`.
pub fn snapshot_project(project: &Path, out: &mut HashMap<PathBuf, u64>) {
    for f in list(project, |p| p.extension().is_some_and(|e| e == "jsonl")) {
        out.insert(f.path, f.len);
    }
    for f in session_files(project) {
        if let Some(dir) = subagents_dir(project, &f.path) {
            for (path, _) in nested_agent_files(&dir) {
                if let Some(a) = stat(path) {
                    out.insert(a.path, a.len);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(p, text).unwrap();
    }

    fn user(session: &str, cwd: &str) -> String {
        format!(
            "{{\"type\":\"user\",\"uuid\":\"u1\",\"sessionId\":\"{session}\",\"session_id\":\"other\",\"cwd\":\"{cwd}\",\"message\":{{\"role\":\"user\",\"content\":\"hi\"}}}}\n"
        )
    }

    #[test]
    fn project_dir_name_replaces_every_non_alphanumeric_char() {
        assert_eq!(
            project_dir_name("/home/dev/my app.v2"),
            "-home-dev-my-app-v2"
        );
        assert_eq!(project_dir_name("/workspace"), "-workspace");
        assert_eq!(project_dir_name("/a__b"), "-a--b");
        // é is one UTF-16 unit, 😀 two.
        assert_eq!(project_dir_name("/café😀"), "-caf---");
    }

    #[test]
    fn session_and_agent_file_names() {
        assert!(is_session_file(Path::new("/p/0b1c.jsonl")));
        assert!(!is_session_file(Path::new("/p/agent-a1.jsonl")));
        assert!(!is_session_file(Path::new("/p/sessions-index.json")));
        assert!(!is_session_file(Path::new("/p/.jsonl")));
        assert_eq!(agent_id(Path::new("/p/agent-a1.jsonl")), Some("a1"));
        assert_eq!(agent_id(Path::new("/p/agent-a1.meta.json")), None);
        assert_eq!(agent_id(Path::new("/p/s.jsonl")), None);
    }

    #[test]
    fn newest_session_of_the_named_directory_wins() {
        let root = tempfile::tempdir().unwrap();
        let projects = root.path();
        assert!(matches!(
            find_session(&projects.join("missing"), "/w"),
            Lookup::Waiting(_)
        ));
        fs::create_dir_all(projects.join("-w")).unwrap();
        assert!(matches!(find_session(projects, "/w"), Lookup::Waiting(_)));
        let old = projects.join("-w/old.jsonl");
        let new = projects.join("-w/new.jsonl");
        write(&old, &user("old", "/w"));
        write(&new, &user("new", "/w"));
        write(&projects.join("-w/agent-x.jsonl"), &user("new", "/w"));
        let t = SystemTime::now();
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(t - std::time::Duration::from_secs(60))
            .unwrap();
        fs::File::options()
            .write(true)
            .open(projects.join("-w/agent-x.jsonl"))
            .unwrap()
            .set_modified(t + std::time::Duration::from_secs(60))
            .unwrap();
        match find_session(projects, "/w") {
            Lookup::Session {
                project_dir,
                session,
            } => {
                assert_eq!(project_dir, projects.join("-w"));
                assert_eq!(session.path, new, "agent files are not sessions");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_directory_whose_records_have_the_workspace_cwd_is_accepted() {
        let root = tempfile::tempdir().unwrap();
        let s = root.path().join("-home-a-long-name-abc123/s1.jsonl");
        write(&s, &user("s1", "/home/a/long:name"));
        write(&root.path().join("-elsewhere/s2.jsonl"), &user("s2", "/x"));
        match find_session(root.path(), "/home/a/long:name") {
            Lookup::Session { session, .. } => assert_eq!(session.path, s),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subagents_in_both_layouts_flat_ones_filtered_by_session() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        let session = p.join("s1.jsonl");
        write(&session, &user("s1", "/w"));
        write(&p.join("agent-flat.jsonl"), &user("s1", "/w"));
        write(&p.join("agent-other.jsonl"), &user("s0", "/w"));
        write(&p.join("agent-empty.jsonl"), "{\"type\":\"user\"");
        write(&p.join("s1/subagents/agent-nest.jsonl"), "");
        write(
            &p.join("s1/subagents/agent-nest.meta.json"),
            "{\"agentType\":\"x\",\"description\":\"Find the bug\"}",
        );
        write(&p.join("s1/tool-results/t.txt"), "not a transcript");
        write(&p.join("s1/subagents/workflows/wf_1/journal.jsonl"), "{}\n");
        write(&p.join("s1/subagents/workflows/wf_1/agent-w1.jsonl"), "");
        write(
            &p.join("s1/subagents/workflows/wf_1/agent-w1.meta.json"),
            "{\"label\":\"review api\",\"phase\":\"review\"}",
        );
        write(&p.join("s1/subagents/deeper/agent-d.jsonl"), "");
        write(&p.join("s1/subagents/a/b/c/d/agent-too-deep.jsonl"), "");
        let mut scanner = SubagentScanner::default();
        let found = scanner.scan(p, &session);
        let ids: Vec<_> = found
            .iter()
            .map(|f| (f.agent_id.as_str(), f.layout, f.workflow.as_deref()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("flat", Layout::Flat, None),
                ("nest", Layout::Nested, None),
                ("d", Layout::Nested, None),
                ("w1", Layout::Nested, Some("wf_1")),
            ]
        );
        assert_eq!(
            meta_description(&p.join("s1/subagents/workflows/wf_1/agent-w1.jsonl")).as_deref(),
            Some("review api")
        );
        assert_eq!(
            meta_description(&p.join("s1/subagents/agent-nest.jsonl")).as_deref(),
            Some("Find the bug")
        );
        assert_eq!(meta_description(&p.join("agent-flat.jsonl")), None);
        // The torn one is picked up once it has a complete line.
        fs::write(p.join("agent-empty.jsonl"), user("s1", "/w")).unwrap();
        assert_eq!(scanner.scan(p, &session).len(), 5);
    }

    #[test]
    fn a_fifo_named_like_a_meta_or_agent_file_never_blocks_discovery() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        let session = p.join("s1.jsonl");
        write(&session, &user("s1", "/w"));
        let dir = p.join("s1/subagents");
        fs::create_dir_all(&dir).unwrap();
        let fifo = |name: &str| {
            nix::unistd::mkfifo(&dir.join(name), nix::sys::stat::Mode::S_IRWXU).unwrap();
        };
        fifo("agent-x.meta.json");
        fifo("agent-y.jsonl");
        nix::unistd::mkfifo(&p.join("agent-z.jsonl"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        write(&dir.join("agent-x.jsonl"), "");
        assert_eq!(meta_description(&dir.join("agent-x.jsonl")), None);
        let found = SubagentScanner::default().scan(p, &session);
        let ids: Vec<_> = found.iter().map(|f| f.agent_id.as_str()).collect();
        // The FIFO agent file is handed on (the follower reports it); the
        // flat FIFO fails the regular-file filter and is never probed.
        assert_eq!(ids, vec!["x", "y"]);
        let mut snap = HashMap::new();
        snapshot_project(p, &mut snap);
        assert!(snap.contains_key(&dir.join("agent-x.jsonl")));
        assert!(!snap.contains_key(&dir.join("agent-y.jsonl")));
    }
}
