//! Virus scanning with clamd (ClamAV's daemon) over its INSTREAM command,
//! on TCP or a unix socket.
//!
//! The protocol (clamd(8)): send `zINSTREAM\0`, then the data as chunks,
//! each a 4-byte big-endian length and that many bytes, then a zero
//! length; clamd answers one NUL-terminated line: `stream: OK`,
//! `stream: <signature> FOUND`, or `<reason> ERROR`.
//!
//! Inbound mail and SMTP submissions are scanned in the SMTP server
//! ([`crate::spam::Filter::screen`]), JMAP EmailSubmissions through
//! [`crate::spam::Filter::check_submission`], whose [`Refusal`] the JMAP
//! layer reports as a SetError.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::spam::{Refusal, RefusalKind};

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `host:port` (clamd's TCPSocket/TCPAddr).
    Tcp(String),
    /// A unix socket path (clamd's LocalSocket).
    Unix(PathBuf),
}

impl ClamdAddress {
    /// Parses `tcp:HOST:PORT`, `unix:PATH`, a bare `HOST:PORT` or an
    /// absolute path.
    pub fn parse(s: &str) -> Option<ClamdAddress> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("tcp:") {
            return rest
                .rsplit_once(':')
                .map(|_| ClamdAddress::Tcp(rest.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            return (!rest.is_empty()).then(|| ClamdAddress::Unix(PathBuf::from(rest)));
        }
        if s.starts_with('/') {
            return Some(ClamdAddress::Unix(PathBuf::from(s)));
        }
        s.rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok())
            .map(|_| ClamdAddress::Tcp(s.to_owned()))
    }
}

/// What to do with mail when clamd cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unreachable {
    /// Answer 451 4.7.1: the sender retries later.
    #[default]
    TempFail,
    /// Accept it, with `X-Virus-Status: Unscanned`.
    Accept,
}

/// The virus scanner's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirusConfig {
    /// clamd's address; `None`: no scanning.
    pub clamd: Option<ClamdAddress>,
    /// When clamd is down or times out.
    pub on_unreachable: Unreachable,
    /// How long one scan may take, connection included. Default 30 s.
    pub timeout: Duration,
    /// Bytes sent to clamd at most (its StreamMaxLength, default 25 MiB);
    /// a longer message is scanned up to that length.
    pub max_size: usize,
    /// Scan submissions (mail from local users) too. Default on.
    pub scan_submissions: bool,
}

impl Default for VirusConfig {
    fn default() -> Self {
        VirusConfig {
            clamd: None,
            on_unreachable: Unreachable::TempFail,
            timeout: Duration::from_secs(30),
            max_size: 25 << 20,
            scan_submissions: true,
        }
    }
}

/// The result of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanResult {
    /// Nothing found.
    Clean,
    /// clamd found this signature.
    Infected(String),
}

/// Why a scan has no result.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// No connection, or it broke, or the scan timed out.
    #[error("clamd unreachable: {0}")]
    Unreachable(String),
    /// clamd answered with an error (size limit, ...).
    #[error("clamd error: {0}")]
    Clamd(String),
}

/// A clamd client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scanner {
    config: VirusConfig,
}

const CHUNK: usize = 64 * 1024;

impl Scanner {
    /// A scanner with `config`; `None` when `config.clamd` is unset.
    pub fn new(config: VirusConfig) -> Option<Scanner> {
        config.clamd.as_ref()?;
        Some(Scanner { config })
    }

    /// Its configuration.
    pub fn config(&self) -> &VirusConfig {
        &self.config
    }

    /// Scans `data`.
    pub async fn scan(&self, data: &[u8]) -> Result<ScanResult, ScanError> {
        let data = &data[..data.len().min(self.config.max_size)];
        let scan = async {
            match self.config.clamd.as_ref().expect("checked in new") {
                ClamdAddress::Tcp(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map_err(|e| ScanError::Unreachable(format!("{addr}: {e}")))?;
                    instream(stream, data).await
                }
                ClamdAddress::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| ScanError::Unreachable(format!("{}: {e}", path.display())))?;
                    instream(stream, data).await
                }
            }
        };
        match tokio::time::timeout(self.config.timeout, scan).await {
            Ok(result) => result,
            Err(_) => Err(ScanError::Unreachable("timed out".into())),
        }
    }

    /// Scans `data` and applies the policy: `Ok(true)` clean, `Ok(false)`
    /// not scanned but to be accepted (`on_unreachable = accept`: tag it
    /// `X-Virus-Status: Unscanned`), or the refusal (a virus; clamd
    /// unreachable under `tempfail`). Counted in [`crate::spam::METRICS`].
    pub async fn check(&self, data: &[u8]) -> Result<bool, Refusal> {
        let m = &crate::spam::METRICS;
        match self.scan(data).await {
            Ok(ScanResult::Clean) => {
                m.add(&m.virus_clean);
                Ok(true)
            }
            Ok(ScanResult::Infected(name)) => {
                m.add(&m.virus_found);
                tracing::info!(signature = %name, "message refused: virus found");
                Err(Refusal {
                    kind: RefusalKind::Virus,
                    description: format!("Message refused: virus found ({})", printable(&name)),
                })
            }
            Err(err) => {
                m.add(&m.virus_unscanned);
                tracing::warn!(error = %err, "message not scanned for viruses");
                match self.config.on_unreachable {
                    Unreachable::Accept => Ok(false),
                    Unreachable::TempFail => Err(Refusal {
                        kind: RefusalKind::ScannerUnavailable,
                        description: "Virus scanner unavailable; try again later".into(),
                    }),
                }
            }
        }
    }

    /// Scans a message a local user submits: `Ok` to send it, or why not
    /// ([`Scanner::check`] without the tag).
    pub async fn check_submission(&self, raw: &[u8]) -> Result<(), Refusal> {
        self.check(raw).await.map(|_| ())
    }
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    data: &[u8],
) -> Result<ScanResult, ScanError> {
    let broken = |e: std::io::Error| ScanError::Unreachable(e.to_string());
    stream.write_all(b"zINSTREAM\0").await.map_err(broken)?;
    for chunk in data.chunks(CHUNK) {
        stream
            .write_all(&(chunk.len() as u32).to_be_bytes())
            .await
            .map_err(broken)?;
        if let Err(e) = stream.write_all(chunk).await {
            // clamd closes early when a size limit is hit: read why.
            return match read_reply(&mut stream).await {
                Ok(reply) if !reply.is_empty() => parse_reply(&reply),
                _ => Err(broken(e)),
            };
        }
    }
    stream.write_all(&[0, 0, 0, 0]).await.map_err(broken)?;
    stream.flush().await.map_err(broken)?;
    let reply = read_reply(&mut stream).await.map_err(broken)?;
    parse_reply(&reply)
}

async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.contains(&0) || reply.len() > 4096 {
            break;
        }
    }
    let end = reply.iter().position(|&b| b == 0).unwrap_or(reply.len());
    Ok(String::from_utf8_lossy(&reply[..end]).trim().to_owned())
}

/// Parses clamd's answer to INSTREAM.
pub fn parse_reply(reply: &str) -> Result<ScanResult, ScanError> {
    let body = reply.strip_prefix("stream:").unwrap_or(reply).trim();
    if body == "OK" {
        Ok(ScanResult::Clean)
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        Ok(ScanResult::Infected(name.trim().to_owned()))
    } else if body.is_empty() {
        Err(ScanError::Unreachable(
            "connection closed without an answer".into(),
        ))
    } else {
        Err(ScanError::Clamd(body.to_owned()))
    }
}

/// A signature name for a reply text: printable ASCII only.
pub fn printable(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply("stream: OK").unwrap(), ScanResult::Clean);
        assert_eq!(
            parse_reply("stream: Eicar-Test-Signature FOUND").unwrap(),
            ScanResult::Infected("Eicar-Test-Signature".into())
        );
        assert!(matches!(
            parse_reply("INSTREAM size limit exceeded. ERROR"),
            Err(ScanError::Clamd(_))
        ));
        assert!(matches!(parse_reply(""), Err(ScanError::Unreachable(_))));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            ClamdAddress::parse("tcp:127.0.0.1:3310"),
            Some(ClamdAddress::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            ClamdAddress::parse("127.0.0.1:3310"),
            Some(ClamdAddress::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            ClamdAddress::parse("unix:/run/clamav/clamd.ctl"),
            Some(ClamdAddress::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(
            ClamdAddress::parse("/run/clamav/clamd.ctl"),
            Some(ClamdAddress::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(ClamdAddress::parse("nonsense"), None);
    }

    /// A fake clamd that checks the framing and answers like clamd.
    #[tokio::test]
    async fn instream_framing_against_a_scripted_daemon() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut cmd = [0u8; 10];
                s.read_exact(&mut cmd).await.unwrap();
                assert_eq!(&cmd, b"zINSTREAM\0");
                let mut data = Vec::new();
                loop {
                    let mut len = [0u8; 4];
                    s.read_exact(&mut len).await.unwrap();
                    let len = u32::from_be_bytes(len) as usize;
                    if len == 0 {
                        break;
                    }
                    assert!(len <= CHUNK);
                    let mut chunk = vec![0u8; len];
                    s.read_exact(&mut chunk).await.unwrap();
                    data.extend_from_slice(&chunk);
                }
                let reply: &[u8] = if data.windows(3).any(|w| w == b"BAD") {
                    b"stream: Test-Sig FOUND\0"
                } else {
                    b"stream: OK\0"
                };
                s.write_all(reply).await.unwrap();
            }
        });
        let scanner = Scanner::new(VirusConfig {
            clamd: Some(ClamdAddress::Tcp(addr.to_string())),
            ..VirusConfig::default()
        })
        .unwrap();
        let mut big = vec![b'a'; 200_000];
        assert_eq!(scanner.scan(&big).await.unwrap(), ScanResult::Clean);
        big.extend_from_slice(b"BAD");
        assert_eq!(
            scanner.scan(&big).await.unwrap(),
            ScanResult::Infected("Test-Sig".into())
        );
    }

    #[tokio::test]
    async fn unreachable_daemon_follows_the_policy() {
        // A port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut config = VirusConfig {
            clamd: Some(ClamdAddress::Tcp(format!("127.0.0.1:{port}"))),
            ..VirusConfig::default()
        };
        let scanner = Scanner::new(config.clone()).unwrap();
        assert!(matches!(
            scanner.scan(b"x").await,
            Err(ScanError::Unreachable(_))
        ));
        assert!(
            scanner
                .check_submission(b"x")
                .await
                .unwrap_err()
                .temporary()
        );
        config.on_unreachable = Unreachable::Accept;
        assert!(
            Scanner::new(config)
                .unwrap()
                .check_submission(b"x")
                .await
                .is_ok()
        );
    }
}
