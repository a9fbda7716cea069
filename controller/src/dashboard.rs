//! The mesh dashboard's static files (`assets/dashboard/`), built into the binary so the
//! controller serves the page with nothing to install beside it and nothing fetched from a CDN.
//! The observation API's server answers `GET /` and `GET /assets/...` with [`asset`].

const INDEX_HTML: &[u8] = include_bytes!("../assets/dashboard/index.html");
const APP_JS: &[u8] = include_bytes!("../assets/dashboard/app.js");
const STYLE_CSS: &[u8] = include_bytes!("../assets/dashboard/style.css");

/// The dashboard file at request path `path` (without its query string): its content type and
/// body. `/` is the page; `None` for any other path.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/assets/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/assets/style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::asset;

    #[test]
    fn serves_the_page_at_the_root_and_nothing_outside_its_files() {
        assert_eq!(asset("/").map(|(t, _)| t), Some("text/html; charset=utf-8"));
        assert_eq!(asset("/"), asset("/index.html"));
        for path in [
            "",
            "/api/graph",
            "/assets/",
            "/assets/../src/lib.rs",
            "/assets/app.js?x",
        ] {
            assert_eq!(asset(path), None, "{path}");
        }
    }
}
