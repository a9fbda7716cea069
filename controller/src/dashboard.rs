//! The mesh dashboard's static files (`assets/dashboard/`), built into the binary so the
//! controller serves the page with nothing to install beside it and nothing fetched from a CDN.
//! The observation API's server answers `GET /` and `GET /assets/...` with [`asset`].

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// `/assets/<file>`, served from assets/dashboard/<file>.
macro_rules! under_assets {
    ($file:literal, $content_type:expr) => {
        (
            concat!("/assets/", $file),
            $content_type,
            include_bytes!(concat!("../assets/dashboard/", $file)) as &[u8],
        )
    };
}

/// Request path, content type and body. The scripts are ES modules: app.js imports the others.
const FILES: &[(&str, &str, &[u8])] = &[
    ("/", HTML, include_bytes!("../assets/dashboard/index.html")),
    under_assets!("style.css", CSS),
    under_assets!("app.js", JAVASCRIPT),
    under_assets!("common.js", JAVASCRIPT),
    under_assets!("graph.js", JAVASCRIPT),
    under_assets!("panel.js", JAVASCRIPT),
    under_assets!("tap.js", JAVASCRIPT),
];

/// The dashboard file at request path `path` (without its query string): its content type and
/// body. `/` is the page; `None` for any other path.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/index.html" { "/" } else { path };
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, content_type, body)| (*content_type, *body))
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
