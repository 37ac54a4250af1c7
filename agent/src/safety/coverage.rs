//! What a vzdump of a CT holds, from its CURRENT config (`safety-nets.md` §1.1, §3 item 3):
//! rootfs and volume mount points with `backup=1` only. Volume mount points without it, bind
//! and device mount points, and every `unusedN` volume are *uncovered*: a destroy frees the
//! volumes among them and no copy can bring them back, so the operator must sign their names.

use proxmox_client::LxcConfig;

/// Covered and uncovered volumes by config key, in PVE's natural order (`mp2` before `mp10`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    pub covered: Vec<String>,
    pub uncovered: Vec<String>,
    /// Sum of the covered volumes' `size=` (an upper bound for the archive), bytes.
    pub covered_bytes: u64,
}

impl Coverage {
    pub fn of(config: &LxcConfig) -> Coverage {
        let mut c = Coverage::default();
        if let Some(r) = &config.rootfs {
            c.covered.push("rootfs".into());
            c.covered_bytes += r.size.map(|s| s.bytes()).unwrap_or(0);
        }
        for (i, mp) in &config.mp {
            let key = format!("mp{i}");
            if mp.storage().is_some() && mp.backup == Some(true) {
                c.covered_bytes += mp.size.map(|s| s.bytes()).unwrap_or(0);
                c.covered.push(key);
            } else {
                c.uncovered.push(key);
            }
        }
        let mut unused: Vec<u32> = config
            .extra
            .keys()
            .filter_map(|k| k.strip_prefix("unused")?.parse().ok())
            .collect();
        unused.sort_unstable();
        c.uncovered
            .extend(unused.into_iter().map(|i| format!("unused{i}")));
        // Device passthrough (`devN`) holds no volume of the CT, but a restore would not bring
        // it back either; name it so the operator sees it.
        let mut devs: Vec<u32> = config
            .extra
            .keys()
            .filter_map(|k| k.strip_prefix("dev")?.parse().ok())
            .collect();
        devs.sort_unstable();
        c.uncovered
            .extend(devs.into_iter().map(|i| format!("dev{i}")));
        c
    }

    /// The value of `bind.uncovered` (`mp1,unused0`), `None` when everything is covered.
    pub fn uncovered_binding(&self) -> Option<String> {
        (!self.uncovered.is_empty()).then(|| self.uncovered.join(","))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> LxcConfig {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        LxcConfig::from_map(map).unwrap()
    }

    #[test]
    fn rootfs_and_backup_mount_points_are_covered_the_rest_is_named() {
        let c = Coverage::of(&config(&[
            ("rootfs", "local-lvm:vm-101-disk-0,size=4G"),
            ("mp0", "local-lvm:vm-101-disk-1,mp=/srv/a,backup=1,size=1G"),
            ("mp1", "local-lvm:vm-101-disk-2,mp=/srv/b,size=1G"),
            ("mp10", "/mnt/host,mp=/srv/bind"),
            ("mp2", "local-lvm:vm-101-disk-3,mp=/srv/c,backup=0,size=1G"),
            ("unused0", "local-lvm:vm-101-disk-9"),
        ]));
        assert_eq!(c.covered, ["rootfs", "mp0"]);
        assert_eq!(c.uncovered, ["mp1", "mp2", "mp10", "unused0"]);
        assert_eq!(c.covered_bytes, 5 * 1024 * 1024 * 1024);
        assert_eq!(
            c.uncovered_binding().as_deref(),
            Some("mp1,mp2,mp10,unused0")
        );
        let plain = Coverage::of(&config(&[("rootfs", "local-lvm:vm-1-disk-0,size=1G")]));
        assert_eq!(plain.uncovered_binding(), None);
    }
}
