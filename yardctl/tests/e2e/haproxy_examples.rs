//! Every example manifest of `examples/` rendered by the agent's HAProxy
//! driver is accepted by `haproxy -c`, or refused naming the field HAProxy
//! cannot express.

use switchyard::resource::pb_snapshot;
use switchyard_agent::driver::haproxy::{self, render};
use switchyard_agent::state::Store;
use switchyard_control_plane::testing::TempDir;

/// What each example is expected to give: `None` accepted, or the field
/// its refusal names.
const EXAMPLES: &[(&str, Option<&str>)] = &[
    ("basic.yaml", None),
    ("canary.yaml", None),
    // Outlier detection needs HAProxy's own checks, which stay off.
    (
        "consistent-hashing.yaml",
        Some("service/sessions.outlier_detection"),
    ),
    ("header-routing.yaml", None),
    ("tcp.yaml", None),
];

#[tokio::test]
#[ignore = "needs haproxy (scripts/test installs it)"]
async fn examples_render_to_files_haproxy_accepts() {
    assert!(
        switchyard_agent::driver::find_program("haproxy".as_ref()).is_some(),
        "haproxy is not installed (scripts/test installs it)"
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let listed: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    for name in &listed {
        assert!(
            EXAMPLES.iter().any(|(e, _)| e == name),
            "examples/{name} is not in the HAProxy example table"
        );
    }
    let dir = TempDir::new();
    let sockets = render::Sockets {
        stats: dir.path().join("stats.sock").display().to_string(),
    };
    for (name, refused) in EXAMPLES {
        let path = format!("{root}/{name}");
        let text = std::fs::read_to_string(&path).unwrap();
        let manifests = yardctl::manifest::parse(&text, name).unwrap();
        let resources: Vec<_> = manifests.into_iter().map(|m| m.resource).collect();
        let config = Store::new()
            .apply_snapshot(pb_snapshot(1, &resources))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match (render::render(&config, &sockets), refused) {
            (Ok(r), None) => {
                if let Err(e) = haproxy::check("haproxy".as_ref(), dir.path(), &r.text).await {
                    panic!("{name}: {e}\n{}", r.text);
                }
            }
            (Err(e), Some(field)) => {
                assert!(e.to_string().contains(field), "{name}: {e}");
            }
            (Ok(_), Some(field)) => panic!("{name}: rendered, but {field} was to be refused"),
            (Err(e), None) => panic!("{name}: refused: {e}"),
        }
    }
}
