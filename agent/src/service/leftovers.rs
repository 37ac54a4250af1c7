//! What `check-config` finds in the state directory that does not belong to this
//! configuration: a journal whose trust document in force is another fleet's (every approval
//! would be refused as `wrong_fleet`), or whose last accepted desired revision is above the
//! document the source has now (it would be refused as `desired_rollback`). Both are what a
//! test run or a copied `/var/lib/drover` leave behind; the file-based checks cannot see them.

use crate::approval::trust::Trust;
use crate::desired::source::Source;
use crate::service::config::Config;

/// One warning per finding, each naming the code the agent would refuse with and the way out.
pub async fn journal_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if !config.state_dir.join("db").exists() {
        return out;
    }
    let Ok(store) = crate::store::Store::open_read_only(&config.state_dir) else {
        return out;
    };
    if let Trust::Valid(t) = crate::approval::trust::effective(&config.trust.file, &store)
        && t.fleet != config.fleet
    {
        out.push(format!(
            "[wrong_fleet] the journal in {} holds trust document v{} of fleet {:?}, but fleet = {:?}: every approval would be refused. A leftover from another setup or a test? Start a new journal: drover journal move-aside",
            config.state_dir.display(),
            t.version,
            t.fleet,
            config.fleet
        ));
    }
    // Only a local directory is read here: a hub is asked once by check-config itself.
    if let (Some(journal_rev), Ok(source @ Source::Dir(_))) =
        (store.last_revision(), Source::from_config(config))
        && let Ok(Some(f)) = source.fetch(None, None, crate::clock::unix_now()).await
        && f.doc.revision < journal_rev
    {
        out.push(format!(
            "[desired_rollback] the journal in {} has accepted desired revision {journal_rev}, the document at {} is revision {}: it would be refused until its revision is above {journal_rev} (or the journal is moved aside: drover journal move-aside)",
            config.state_dir.display(),
            f.origin,
            f.doc.revision
        ));
    }
    out
}
