//! The control socket's wire format: one request line, then response lines `key value`
//! ending with `end`. Values are percent-encoded where they hold a newline, a `%` or nothing
//! printable, so every value is one line. Decoding trusts nothing: unknown keys are skipped,
//! missing ones are errors naming them.

use std::time::Duration;

use crate::percent::Lines;

/// First word of every request.
pub(crate) const HEADER: &str = "flip-control/1";

/// Longest request accepted; a longer one gets an error answer.
pub(crate) const MAX_REQUEST: usize = 512;

/// Longest response a client reads.
pub(crate) const MAX_RESPONSE: usize = 1 << 20;

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Status,
    Upgrade,
    Rollback,
}

impl Request {
    pub(crate) fn encode(self) -> String {
        let word = match self {
            Request::Status => "status",
            Request::Upgrade => "upgrade",
            Request::Rollback => "rollback",
        };
        format!("{HEADER} {word}\n")
    }

    pub(crate) fn decode(line: &str) -> Result<Request, String> {
        match line
            .trim_end_matches(['\r', '\n'])
            .split(' ')
            .collect::<Vec<_>>()[..]
        {
            [HEADER, "status"] => Ok(Request::Status),
            [HEADER, "upgrade"] => Ok(Request::Upgrade),
            [HEADER, "rollback"] => Ok(Request::Rollback),
            [HEADER, other] => Err(format!(
                "unknown request {other:?}: expected status, upgrade or rollback"
            )),
            _ => Err(format!(
                "expected `{HEADER} status`, `{HEADER} upgrade` or `{HEADER} rollback`"
            )),
        }
    }
}

/// A response being written.
#[derive(Debug)]
pub(crate) struct Writer(Lines);

impl Writer {
    pub(crate) fn new(kind: &str) -> Writer {
        Writer(Lines::new(kind))
    }

    pub(crate) fn field(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Writer {
        self.0
            .line(format_args!("{key} {}", escape(&value.to_string())));
        self
    }

    pub(crate) fn finish(self) -> String {
        self.0.finish()
    }
}

/// A response read: its kind (`ok`, `refused`, `failed`, `error`) and fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) kind: String,
    pub(crate) fields: Vec<(String, String)>,
}

impl Response {
    pub(crate) fn decode(text: &str) -> Result<Response, String> {
        let mut lines = text.split('\n');
        let kind = lines
            .next()
            .filter(|k| !k.is_empty())
            .ok_or("empty response")?
            .to_owned();
        let mut fields = Vec::new();
        for line in lines {
            if line == "end" {
                return Ok(Response { kind, fields });
            }
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            let value = unescape(value).ok_or_else(|| format!("bad encoding in {key:?}"))?;
            fields.push((key.to_owned(), value));
        }
        Err("the response ended before `end`".into())
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("the response has no {key:?}"))
    }

    pub(crate) fn number<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        self.require(key)?
            .parse()
            .map_err(|_| format!("{key:?} is not a number"))
    }

    pub(crate) fn millis(&self, key: &str) -> Result<Duration, String> {
        let ms: f64 = self.number(key)?;
        if ms.is_finite() && ms >= 0.0 {
            Ok(Duration::from_secs_f64(ms / 1000.0))
        } else {
            Err(format!("{key:?} is not a duration"))
        }
    }
}

/// Escapes `%`, line ends and control characters but tabs: a value stays on its line.
fn escape(s: &str) -> String {
    crate::percent::encode(s, |c| {
        c == '%' || c == '\n' || c == '\r' || (c.is_control() && c != '\t')
    })
}

fn unescape(s: &str) -> Option<String> {
    crate::percent::decode(s, |_| true)
}

/// Milliseconds with two decimals, as the wire carries durations.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_round_trips_with_awkward_values() {
        let mut w = Writer::new("failed");
        w.field("reason", "exit code 3")
            .field("stderr", "line one\nline 100%\r")
            .field("listener", "tcp 127.0.0.1:1")
            .field("listener", "unix /tmp/a b.sock");
        let r = Response::decode(&w.finish()).unwrap();
        assert_eq!(r.kind, "failed");
        assert_eq!(r.get("stderr"), Some("line one\nline 100%\r"));
        assert_eq!(r.all("listener").count(), 2);
        assert!(r.number::<u32>("reason").is_err());
    }

    #[test]
    fn bad_requests_and_responses_are_errors() {
        assert_eq!(
            Request::decode("flip-control/1 status\n"),
            Ok(Request::Status)
        );
        for bad in [
            "",
            "status",
            "flip-control/1",
            "flip-control/1 reboot",
            "flip-control/2 status",
        ] {
            assert!(Request::decode(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "ok\nkey value", "ok\nkey %zz\nend"] {
            assert!(Response::decode(bad).is_err(), "{bad:?}");
        }
    }
}
