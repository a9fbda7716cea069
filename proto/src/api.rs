//! Generated protobuf messages and gRPC stubs for the mesh APIs (see `proto/ambit/`).
//! The module tree mirrors the protobuf packages, which cross-package references rely on; the
//! short aliases below are what the rest of the code uses.

#[allow(clippy::all, clippy::pedantic)]
pub mod ambit {
    pub mod workload {
        pub mod v1 {
            tonic::include_proto!("ambit.workload.v1");
        }
    }
    pub mod security {
        pub mod v1 {
            tonic::include_proto!("ambit.security.v1");
        }
    }
    pub mod route {
        pub mod v1 {
            tonic::include_proto!("ambit.route.v1");
        }
    }
    pub mod traffic {
        pub mod v1 {
            tonic::include_proto!("ambit.traffic.v1");
        }
    }
    pub mod discovery {
        pub mod v1 {
            tonic::include_proto!("ambit.discovery.v1");
        }
    }
    pub mod telemetry {
        pub mod v1 {
            tonic::include_proto!("ambit.telemetry.v1");
        }
    }
}

/// The controller's side of `Discovery/Subscribe`, answering with
/// [`EncodedResponse`](crate::response_parts::EncodedResponse)s (see `build.rs`).
#[allow(clippy::all, clippy::pedantic)]
pub mod discovery_encoded {
    tonic::include_proto!("ambit.discovery.v1.Discovery");
}

pub use ambit::discovery::v1 as discovery;
pub use ambit::route::v1 as route;
pub use ambit::security::v1 as security;
pub use ambit::telemetry::v1 as telemetry;
pub use ambit::traffic::v1 as traffic;
pub use ambit::workload::v1 as workload;

impl discovery::Resource {
    /// `<type>/<name>`, as the proxies key what they hold; the type is `unspecified` for a
    /// resource without content.
    pub fn key(&self) -> String {
        let kind = self
            .kind
            .as_ref()
            .map_or(discovery::ResourceType::Unspecified, |k| k.resource_type());
        format!("{}/{}", kind.key_name(), self.name)
    }
}

impl discovery::resource::Kind {
    pub fn resource_type(&self) -> discovery::ResourceType {
        use discovery::ResourceType as T;
        match self {
            Self::Workload(_) => T::Workload,
            Self::Service(_) => T::Service,
            Self::Waypoint(_) => T::WaypointResource,
            Self::AuthorizationPolicy(_) => T::AuthorizationPolicy,
            Self::Route(_) => T::Route,
            Self::TrafficPolicy(_) => T::TrafficPolicy,
            Self::EgressScope(_) => T::EgressScope,
        }
    }
}

impl discovery::ResourceType {
    /// The type's name in resource keys (`<type>/<name>`), which proxies echo back in
    /// `known_versions`: both ends must spell it alike.
    pub fn key_name(self) -> &'static str {
        match self {
            discovery::ResourceType::Workload => "workload",
            discovery::ResourceType::Service => "service",
            discovery::ResourceType::WaypointResource => "waypoint",
            discovery::ResourceType::AuthorizationPolicy => "authorization_policy",
            discovery::ResourceType::Route => "route",
            discovery::ResourceType::TrafficPolicy => "traffic_policy",
            discovery::ResourceType::EgressScope => "egress_scope",
            discovery::ResourceType::Unspecified => "unspecified",
        }
    }

    /// The type whose key name is `name`.
    pub fn from_key_name(name: &str) -> Option<Self> {
        [
            discovery::ResourceType::Workload,
            discovery::ResourceType::Service,
            discovery::ResourceType::WaypointResource,
            discovery::ResourceType::AuthorizationPolicy,
            discovery::ResourceType::Route,
            discovery::ResourceType::TrafficPolicy,
            discovery::ResourceType::EgressScope,
        ]
        .into_iter()
        .find(|t| t.key_name() == name)
    }
}
