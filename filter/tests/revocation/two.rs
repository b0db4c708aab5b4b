//! Two workers (two Envoy threads) over one mock host: the fixture of the suites that
//! check what one worker's poll does to the others.

use super::*;

pub(super) fn parse(cfg: &Value) -> Config {
    Config::parse(cfg.to_string().as_bytes()).unwrap()
}

/// Two workers (two Envoy threads) over one host.
pub(super) struct Two {
    pub(super) key: Key,
    pub(super) host: Mock,
    pub(super) w: Vec<Worker>,
    pub(super) now: u64,
    pub(super) minted: u32,
}

impl Two {
    pub(super) fn new() -> Two {
        let key = Key::new("k1");
        let now = now_secs();
        let mut host = Mock::new(now * 1000);
        let mut w = vec![
            Worker::new(parse(&config(&key))),
            Worker::new(parse(&config(&key))),
        ];
        for x in &mut w {
            x.start(&mut host);
        }
        Two {
            key,
            host,
            w,
            now,
            minted: 0,
        }
    }

    pub(super) fn token(&mut self, sub: &str) -> String {
        self.minted += 1;
        self.key
            .sign(&json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": self.now,
            "exp": self.now + 600, "jti": format!("svid-{}", self.minted)}))
    }

    pub(super) fn send(&mut self, i: usize, ctx: u32, sub: &str, token: &str) -> Verdict {
        self.host.set_prop(&PEER, sub);
        let auth = format!("Bearer {token}");
        self.host
            .request(ctx, &[(":path", "/x"), ("authorization", &auth)]);
        self.w[i].on_request(&mut self.host, ctx)
    }

    /// Delivers worker `i`'s queued messages (dispatch kicks, revocation kicks, keys).
    pub(super) fn drain(&mut self, i: usize) -> usize {
        let q = self.w[i].queue_name().unwrap().to_string();
        let msgs: Vec<Vec<u8>> = self
            .host
            .enqueued
            .iter()
            .filter(|(n, _)| *n == q)
            .map(|(_, m)| m.clone())
            .collect();
        self.host.enqueued.retain(|(n, _)| *n != q);
        for m in &msgs {
            self.host.ctx = 0;
            self.w[i].on_notify(&mut self.host, m);
        }
        msgs.len()
    }

    /// Worker `i` exchanges `token` of `sub` for `participant` (shared-data entry).
    pub(super) fn cache(&mut self, i: usize, ctx: u32, sub: &str, token: &str, participant: &str) {
        assert_eq!(self.send(i, ctx, sub, token), Verdict::Pause);
        self.drain(i);
        let d = self.host.dispatched.last().unwrap().clone();
        assert_eq!(d.header(":path"), Some("/token"));
        self.host.ctx = d.from_ctx;
        self.w[i].on_call_response(&mut self.host, d.token, ok_response(participant, 300));
        assert_eq!(
            self.host.req_header(ctx, "authorization"),
            Some(format!("Bearer {participant}"))
        );
    }

    pub(super) fn tick(&mut self, i: usize) {
        self.host.ctx = 0;
        self.w[i].on_tick(&mut self.host);
    }

    pub(super) fn polls(&self) -> Vec<Dispatched> {
        self.host
            .dispatched
            .iter()
            .filter(|d| d.header(":method") == Some("GET"))
            .cloned()
            .collect()
    }

    /// Worker `i` ticks, polls and gets `resp`.
    pub(super) fn poll(&mut self, i: usize, resp: CallResponse) -> String {
        let before = self.polls().len();
        self.tick(i);
        let polls = self.polls();
        assert_eq!(polls.len(), before + 1, "worker {i} polls on this tick");
        let d = polls.last().unwrap().clone();
        self.host.ctx = 0;
        self.w[i].on_call_response(&mut self.host, d.token, resp);
        d.header(":path").unwrap().to_string()
    }

    pub(super) fn later(&mut self, ms: u64) {
        self.host.now_ms += ms;
    }

    pub(super) fn served(&self, ctx: u32) -> Option<String> {
        self.host.req_header(ctx, "authorization")
    }

    /// Whether request `ctx` was refused 403 as revoked.
    pub(super) fn refused(&self, ctx: u32) -> bool {
        self.host.replies.get(&ctx).is_some_and(|r| {
            r.status == 403
                && r.json()["error_description"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("revoked: "))
        })
    }
}
