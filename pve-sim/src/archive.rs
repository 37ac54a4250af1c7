//! vzdump archives as real files: a ustar tar (`./etc/vzdump/pct.conf` first, as vzdump
//! writes it, then one `.pve-sim-volume` file per backed-up mount point holding the volume's
//! pretend data), optionally wrapped in a zstd or gzip container. The containers use only
//! stored (uncompressed) blocks, so they are valid for `zstd -d`/`gunzip` without a
//! compression library; the simulator reads back only what it wrote, and anything else is a
//! corrupt archive (as a damaged file is for PVE).

/// The member holding the CT config (`VZDump/LXC.pm archive`).
pub const CONF_MEMBER: &str = "./etc/vzdump/pct.conf";
/// The file that stands for a mount point's contents.
pub const DATA_FILE: &str = ".pve-sim-volume";

/// The member for the data of the mount point at `mp` (`/` for rootfs).
pub fn data_member(mp: &str) -> String {
    let mp = mp.trim_matches('/');
    if mp.is_empty() {
        format!("./{DATA_FILE}")
    } else {
        format!("./{mp}/{DATA_FILE}")
    }
}

/// How the archive is compressed (`compress`: `0`, `1`/`lzo`, `gzip`, `zstd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Named `.tar.lzo` as PVE does; the sim writes the plain tar inside (no lzop container).
    Lzo,
}

impl Compression {
    pub fn from_param(p: Option<&str>) -> Compression {
        match p {
            Some("zstd") => Compression::Zstd,
            Some("gzip") => Compression::Gzip,
            Some("1") | Some("lzo") => Compression::Lzo,
            _ => Compression::None,
        }
    }
    /// File extension and the listing's `format`.
    pub fn ext(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Zstd => "tar.zst",
            Compression::Lzo => "tar.lzo",
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let n = field.len() - 1;
    let s = format!("{:0width$o}", v, width = n);
    let b = s.as_bytes();
    let start = b.len().saturating_sub(n);
    field[..n].copy_from_slice(&b[start..]);
    field[n] = 0;
}

/// A ustar archive of regular files.
pub fn tar(files: &[(String, Vec<u8>)], mtime: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = [0u8; 512];
        let n = name.as_bytes();
        let n = &n[..n.len().min(100)];
        h[..n.len()].copy_from_slice(n);
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], mtime);
        h[148..156].copy_from_slice(b"        ");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let c = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(c.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn parse_octal(f: &[u8]) -> Option<u64> {
    let s: String = f
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// The members of a tar archive; any damage is an error naming the offset.
pub fn untar(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let Some(h) = data.get(off..off + 512) else {
            return Err("unexpected end of archive".into());
        };
        if h.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let stored = parse_octal(&h[148..156]).ok_or("invalid tar header checksum")?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != sum {
            return Err(format!(
                "this does not look like a tar archive (bad header at byte {off})"
            ));
        }
        let name: String = h[..100]
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| b as char)
            .collect();
        let size = parse_octal(&h[124..136]).ok_or("invalid member size")? as usize;
        let body = data
            .get(off + 512..off + 512 + size)
            .ok_or("unexpected end of archive")?;
        out.push((name, body.to_vec()));
        off += 512 + size.div_ceil(512) * 512;
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const ZSTD_BLOCK: usize = 128 * 1024;

/// A zstd frame of raw blocks (RFC 8878 §3.1): valid for any zstd decoder.
fn zstd_wrap(data: &[u8]) -> Vec<u8> {
    // Descriptor 0: no content size, no checksum, no dictionary; window 1 MiB (exponent 10).
    let mut out = ZSTD_MAGIC.to_vec();
    out.push(0x00);
    out.push(10 << 3);
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(ZSTD_BLOCK).collect()
    };
    let last = chunks.len() - 1;
    for (i, c) in chunks.into_iter().enumerate() {
        let header = (c.len() as u32) << 3 | u32::from(i == last);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(c);
    }
    out
}

fn zstd_unwrap(data: &[u8], partial: bool) -> Result<Vec<u8>, String> {
    let bad = || "zstd: corrupted data".to_string();
    let fhd = *data.get(4).ok_or_else(bad)?;
    if fhd & 0x20 != 0 || fhd & 0x03 != 0 || fhd & 0xC0 != 0 {
        return Err("zstd: unsupported frame (not written by pve-sim)".into());
    }
    let mut off = 6;
    let mut out = Vec::new();
    loop {
        let Some(h) = data.get(off..off + 3) else {
            return if partial { Ok(out) } else { Err(bad()) };
        };
        let v = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
        let last = v & 1 == 1;
        let kind = (v >> 1) & 3;
        let size = (v >> 3) as usize;
        off += 3;
        match kind {
            0 => {
                match data.get(off..off + size) {
                    Some(b) => out.extend_from_slice(b),
                    None if partial => {
                        out.extend_from_slice(data.get(off..).unwrap_or_default());
                        return Ok(out);
                    }
                    None => return Err(bad()),
                }
                off += size;
            }
            1 => {
                let b = *data.get(off).ok_or_else(bad)?;
                out.resize(out.len() + size, b);
                off += 1;
            }
            _ => return Err("zstd: unsupported block (not written by pve-sim)".into()),
        }
        if last {
            return Ok(out);
        }
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A gzip member of stored deflate blocks (RFC 1951 §3.2.4, RFC 1952).
fn gzip_wrap(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65535).collect()
    };
    let last = chunks.len() - 1;
    for (i, c) in chunks.into_iter().enumerate() {
        out.push(u8::from(i == last));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn gzip_unwrap(data: &[u8], partial: bool) -> Result<Vec<u8>, String> {
    let bad = || "gzip: invalid compressed data--format violated".to_string();
    if data.get(3) != Some(&0) {
        return Err(bad());
    }
    let mut off = 10;
    let mut out = Vec::new();
    loop {
        let Some(&hdr) = data.get(off) else {
            return if partial { Ok(out) } else { Err(bad()) };
        };
        if hdr & 0b110 != 0 {
            return Err("gzip: unsupported deflate block (not written by pve-sim)".into());
        }
        let len = data.get(off + 1..off + 3).ok_or_else(bad)?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        match data.get(off + 5..off + 5 + len) {
            Some(b) => out.extend_from_slice(b),
            None if partial => {
                out.extend_from_slice(data.get(off + 5..).unwrap_or_default());
                return Ok(out);
            }
            None => return Err(bad()),
        }
        off += 5 + len;
        if hdr & 1 == 1 {
            break;
        }
    }
    if partial {
        return Ok(out);
    }
    let crc = data.get(off..off + 4).ok_or_else(bad)?;
    if u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) != crc32(&out) {
        return Err("gzip: invalid compressed data--crc error".into());
    }
    Ok(out)
}

/// The file bytes for `tar_bytes` compressed as `c`.
pub fn wrap(tar_bytes: Vec<u8>, c: Compression) -> Vec<u8> {
    match c {
        Compression::Zstd => zstd_wrap(&tar_bytes),
        Compression::Gzip => gzip_wrap(&tar_bytes),
        Compression::None | Compression::Lzo => tar_bytes,
    }
}

/// The tar inside a file (detected by its magic, as `tar` does).
pub fn unwrap(file: &[u8]) -> Result<Vec<u8>, String> {
    unwrap_as(file, false)
}

fn unwrap_as(file: &[u8], partial: bool) -> Result<Vec<u8>, String> {
    if file.starts_with(&ZSTD_MAGIC) {
        zstd_unwrap(file, partial)
    } else if file.starts_with(&[0x1f, 0x8b]) {
        gzip_unwrap(file, partial)
    } else {
        Ok(file.to_vec())
    }
}

/// The first member only, read from the head of the file as PVE reads the config of an
/// archive before extracting it: damage further on is found only by a full read.
pub fn read_head(file: &[u8]) -> Result<(String, Vec<u8>), String> {
    let tar = unwrap_as(file, true)?;
    let mut head = tar.get(..512).ok_or("unexpected end of archive")?.to_vec();
    let size = parse_octal(&head[124..136]).ok_or("invalid member size")? as usize;
    head.extend_from_slice(
        tar.get(512..512 + size.div_ceil(512) * 512)
            .ok_or("unexpected end of archive")?,
    );
    head.resize(head.len() + 1024, 0);
    untar(&head)?
        .into_iter()
        .next()
        .ok_or_else(|| "empty archive".to_string())
}

/// The members of an archive file.
pub fn read(file: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    untar(&unwrap(file)?)
}

/// The archived `pct.conf`, which vzdump writes first.
pub fn config_of(members: &[(String, Vec<u8>)]) -> Result<String, String> {
    members
        .iter()
        .find(|(n, _)| n == CONF_MEMBER)
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .ok_or_else(|| "unable to extract configuration: archive contains no pct.conf".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn archives_round_trip_in_every_container_and_damage_is_an_error() {
        let files = vec![
            (CONF_MEMBER.to_string(), b"hostname: a\n".to_vec()),
            (data_member("/srv/data"), vec![7u8; 300_000]),
        ];
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let f = wrap(tar(&files, 1_700_000_000), c);
            assert_eq!(read(&f).unwrap(), files, "{c:?}");
            let mut broken = f.clone();
            let mid = broken.len() / 3;
            broken[mid] ^= 0xff;
            broken.truncate(broken.len() - 700);
            assert!(read(&broken).is_err(), "{c:?}");
        }
        assert_eq!(data_member("/"), "./.pve-sim-volume");
        // The head survives damage at the end; a full read does not.
        let f = wrap(tar(&files, 1), Compression::Zstd);
        let cut = &f[..f.len() - 200_000];
        assert_eq!(read_head(cut).unwrap(), files[0]);
        assert!(read(cut).is_err());
        assert!(read(b"garbage").is_err());
    }
}
