//! The dashboard's static assets, built into the binary. (This branch's placeholder: the
//! dashboard helper's module replaces it at merge; the observation API already routes `/` and
//! `/assets/...` here.)

/// The asset served at `path` (`/`, `/assets/<file>`): its content type and bytes.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let _ = path;
    None
}
