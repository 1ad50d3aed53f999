//! The scanner's talk with the outside: the CDR store (asked for the
//! rows of settled recordings, probed while it fails) and the spool
//! (watching deliveries, then `after_delivery` on the PBX's files).

use super::*;

impl FolderScanner {
    pub(super) fn spool_db(&mut self) -> Option<&crate::spool::Spool> {
        // Moved aside and rebuilt by the delivery task (or removed): the
        // new one is where watches must go.
        if self.spool_db.as_ref().is_some_and(|db| db.is_detached()) {
            self.spool_db = None;
        }
        if self.spool_db.is_none() {
            match crate::spool::Spool::open(&self.spool) {
                Ok(db) => self.spool_db = Some(db),
                Err(e) => {
                    self.counters.scan_errors += 1;
                    self.error(format!("folder: after_delivery: {e}"));
                }
            }
        }
        self.spool_db.as_ref()
    }

    /// Asks the spool to tell when `id` is delivered (after_delivery).
    pub(super) fn watch_delivery(&mut self, id: &str, set: &RecordingSet) {
        if self.settings.after_delivery == AfterDelivery::Leave {
            return;
        }
        let files: Vec<String> = set.files().iter().map(|f| encode_path(f)).collect();
        let note = serde_json::to_string(&files).unwrap_or_default();
        self.after_pending = true;
        let res = self.spool_db().map(|db| db.watch_delivery(id, &note));
        if let Some(Err(e)) = res {
            self.counters.scan_errors += 1;
            self.error(format!("folder: after_delivery: {e}"));
        }
    }

    /// Moves or deletes the PBX files of recordings the spool delivered.
    pub(super) fn after_delivery_pass(&mut self) {
        if self.settings.after_delivery == AfterDelivery::Leave {
            return;
        }
        // Tried again later unless nothing is left to wait for.
        self.after_pending = true;
        let done = match self.spool_db().map(|db| db.delivered_watches()) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                self.spool_db = None;
                self.counters.scan_errors += 1;
                self.error(format!("folder: after_delivery: {e}"));
                return;
            }
            None => return,
        };
        for (id, note) in done {
            if !self.tick() {
                return;
            }
            let files: Vec<PathBuf> = serde_json::from_str::<Vec<String>>(&note)
                .unwrap_or_default()
                .iter()
                .map(|s| decode_path(s))
                .collect();
            let mut failed = None;
            for f in &files {
                if let Err(e) = self.after_one(f) {
                    failed = Some(format!("{}: {e}", crate::logmask::file_for_log(f)));
                }
            }
            match failed {
                None => {
                    tracing::info!(target: "pbx_edge::folder", %id, action = ?self.settings.after_delivery, "PBX files handled after delivery");
                    self.after_failed.remove(&id);
                    if let Some(db) = self.spool_db.as_ref() {
                        let _ = db.unwatch_delivery(&id);
                    }
                }
                Some(e) => {
                    if self.after_failed.insert(id.clone()) {
                        self.counters.scan_errors += 1;
                        self.error(format!("folder: after_delivery of {id}: {e} (retried)"));
                    }
                }
            }
        }
        let waiting = self
            .spool_db
            .as_ref()
            .is_none_or(|db| db.watches_pending().unwrap_or(true));
        self.after_pending = waiting || !self.after_failed.is_empty();
    }

    pub(super) fn after_one(&self, f: &Path) -> io::Result<()> {
        match fs::symlink_metadata(f) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Moved or deleted by someone else: nothing left to do, but
                // not silently (a path we could not name right would end
                // here too).
                tracing::warn!(target: "pbx_edge::folder", file = %crate::logmask::file_for_log(f), action = ?self.settings.after_delivery, "folder: after_delivery: the PBX file is not there any more");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        match (self.settings.after_delivery, &self.settings.move_to) {
            (AfterDelivery::Delete, _) => fs::remove_file(f),
            (AfterDelivery::Move, Some(dir)) => {
                let rel = f
                    .strip_prefix(&self.root)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| f.file_name().map(PathBuf::from).unwrap_or_default());
                let target = dir.join(rel);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                match fs::rename(f, &target) {
                    Ok(()) => Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                        // Another file system: copy, sync, then remove.
                        fs::copy(f, &target)?;
                        File::open(&target)?.sync_all()?;
                        fs::remove_file(f)
                    }
                    Err(e) => Err(e),
                }
            }
            _ => Ok(()),
        }
    }

    /// While the store cannot answer and no recording asks it anything:
    /// asks it a question that matches nothing, so that the source is
    /// ready again once the store answers (not only at the next recording).
    pub(super) fn probe_cdr(&mut self) {
        if self.cdr_down.is_none() || self.pulse.stopping() {
            return;
        }
        let Some(store) = self.cdr.as_mut() else {
            return;
        };
        let probe = CdrQuery {
            uniqueid: "pbx-edge-probe".into(),
            files: Vec::new(),
            around: None,
        };
        match store.find(std::slice::from_ref(&probe)) {
            Ok(_) => {
                tracing::info!(target: "pbx_edge::folder", store = %store.describe(), "CDR store answers again");
                self.cdr_down = None;
                self.cdr_down_cause = None;
                self.cdr_down_gave_up = false;
            }
            Err(e) => {
                let cause = e.to_string();
                let msg = format!("folder: {cause}; no recording waits for it");
                if self.cdr_down_cause.as_deref() != Some(cause.as_str()) {
                    self.counters.scan_errors += 1;
                    self.error(msg.clone());
                    self.cdr_down_cause = Some(cause);
                }
                self.cdr_down = Some(msg);
            }
        }
    }

    /// The CDR rows of `sets`, one per set (`Lookup::Down` while the store is
    /// down: `waiting` recordings wait for it).
    pub(super) fn lookup_cdr(&mut self, sets: &[RecordingSet], waiting: usize) -> Vec<Lookup> {
        let Some(store) = self.cdr.as_mut() else {
            return sets.iter().map(|_| Lookup::NoStore).collect();
        };
        if sets.is_empty() {
            return Vec::new();
        }
        let queries: Vec<CdrQuery> = sets
            .iter()
            .map(|set| {
                let stem = set.stem();
                let name = parse_name(&stem, &self.settings.name_patterns);
                let mut files: Vec<String> = set
                    .files()
                    .iter()
                    .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                for ext in ["wav", "WAV", "wav49", "gsm"] {
                    let n = format!("{stem}.{ext}");
                    if !files.contains(&n) {
                        files.push(n);
                    }
                }
                CdrQuery {
                    uniqueid: name.as_ref().map(|n| n.uniqueid.clone()).unwrap_or(stem),
                    files,
                    around: name.map(|n| self.settings.timezone.to_utc(n.started_at)),
                }
            })
            .collect();
        match store.find(&queries) {
            Ok(rows) => {
                self.cdr_down_cause = None;
                self.cdr_down_gave_up = false;
                if self.cdr_down.take().is_some() {
                    tracing::info!(target: "pbx_edge::folder", store = %store.describe(), "CDR store answers again");
                }
                rows.into_iter()
                    .map(|r| r.map_or(Lookup::NotYet, |r| Lookup::Found(Box::new(r))))
                    .collect()
            }
            // A read cut short by a stop: not an error of the store.
            Err(_) if self.pulse.stopping() => sets.iter().map(|_| Lookup::Down).collect(),
            Err(e) => {
                let cause = e.to_string();
                let msg = format!(
                    "folder: {cause}; {waiting} recording(s) wait for it (up to cdr_wait = {:?} each)",
                    self.settings.cdr_wait
                );
                // Logged once per cause, not each time the count changes.
                if self.cdr_down_cause.as_deref() != Some(cause.as_str()) {
                    self.counters.scan_errors += 1;
                    self.error(msg.clone());
                    self.cdr_down_cause = Some(cause);
                }
                self.cdr_down = Some(msg);
                sets.iter().map(|_| Lookup::Down).collect()
            }
        }
    }
}
