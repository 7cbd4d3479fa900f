//! Finding the transcript to follow: `TRANSCRIPT_PATH`, or the newest session
//! file of the workspace's project directory (and its subagent files).
