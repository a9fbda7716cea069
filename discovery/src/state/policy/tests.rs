use std::sync::Arc;

use ambit_proto::api::security as api;

use super::*;

fn policy(action: api::Action, rules: Vec<api::Rule>) -> Arc<Policy> {
    Arc::new(
        Policy::from_api(&api::AuthorizationPolicy {
            name: format!("{action:?}").to_lowercase(),
            namespace: "demo".into(),
            selector: None,
            action: action as i32,
            rules,
            dry_run: false,
        })
        .unwrap(),
    )
}

/// `policy` in observer mode, named `name`.
fn dry_run(name: &str, action: api::Action, rules: Vec<api::Rule>) -> Arc<Policy> {
    Arc::new(
        Policy::from_api(&api::AuthorizationPolicy {
            name: name.into(),
            namespace: "demo".into(),
            selector: None,
            action: action as i32,
            rules,
            dry_run: true,
        })
        .unwrap(),
    )
}

fn from_principal(p: &str) -> api::Rule {
    api::Rule {
        from: vec![api::Source {
            principals: vec![p.into()],
            ..Default::default()
        }],
        to: vec![],
        when: vec![],
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "demo", sa).unwrap()
}

fn src(identity: Option<&SpiffeId>) -> Source<'_> {
    Source {
        identity,
        ip: "10.244.1.7".parse().unwrap(),
    }
}

#[test]
fn deny_wins_over_allow() {
    let bad = id("denied-client");
    let good = id("client");
    let policies = [
        policy(
            api::Action::Allow,
            vec![from_principal("spiffe://cluster.local/ns/demo/*")],
        ),
        policy(api::Action::Deny, vec![from_principal(bad.as_str())]),
    ];
    assert!(
        matches!(decide(policies.iter(), &src(Some(&bad)), 8080).decision, Decision::Deny { policy, .. } if &*policy == "demo/deny")
    );
    assert_eq!(
        decide(policies.iter(), &src(Some(&good)), 8080).decision,
        Decision::Allow {
            policy: Some("demo/allow".into())
        }
    );
}

#[test]
fn allow_policies_make_everything_else_denied() {
    let policies = [policy(
        api::Action::Allow,
        vec![from_principal(id("client").as_str())],
    )];
    assert_eq!(
        decide(policies.iter(), &src(Some(&id("client"))), 80).decision,
        Decision::Allow {
            policy: Some("demo/allow".into())
        }
    );
    assert!(matches!(
        decide(policies.iter(), &src(Some(&id("other"))), 80).decision,
        Decision::Deny { .. }
    ));
    // Plaintext has no identity, so it cannot match a principal.
    assert!(matches!(
        decide(policies.iter(), &src(None), 80).decision,
        Decision::Deny { .. }
    ));
    assert_eq!(
        decide([].iter(), &src(None), 80).decision,
        Decision::Allow { policy: None }
    );
}

#[test]
fn policies_without_rules_match_nothing_and_an_empty_rule_matches_everything() {
    let anyone = id("anyone");
    let allow_nothing = [policy(api::Action::Allow, vec![])];
    assert!(matches!(
        decide(allow_nothing.iter(), &src(Some(&anyone)), 80).decision,
        Decision::Deny { .. }
    ));
    let deny_nothing = [policy(api::Action::Deny, vec![])];
    assert_eq!(
        decide(deny_nothing.iter(), &src(Some(&anyone)), 80).decision,
        Decision::Allow { policy: None }
    );
    let deny_all = [policy(api::Action::Deny, vec![api::Rule::default()])];
    assert!(matches!(
        decide(deny_all.iter(), &src(None), 80).decision,
        Decision::Deny { .. }
    ));
}

#[test]
fn an_ipv4_client_seen_as_ipv6_mapped_meets_the_ipv4_blocks() {
    let rule = |cidr: &str| api::Rule {
        from: vec![api::Source {
            ip_blocks: vec![cidr.into()],
            ..Default::default()
        }],
        to: vec![],
        when: vec![],
    };
    let c = id("client");
    // The same block written as IPv4 and in the IPv4-mapped IPv6 form.
    for cidr in ["10.244.1.0/24", "::ffff:10.244.1.0/120"] {
        let policies = [policy(api::Action::Deny, vec![rule(cidr)])];
        for ip in ["10.244.1.9", "::ffff:10.244.1.9"] {
            let source = Source {
                identity: Some(&c),
                ip: ip.parse().unwrap(),
            };
            assert!(
                matches!(
                    decide(policies.iter(), &source, 8080).decision,
                    Decision::Deny { .. }
                ),
                "{cidr} {ip}"
            );
        }
    }
}

#[test]
fn ports_namespaces_and_ip_blocks() {
    let rule = api::Rule {
        from: vec![api::Source {
            namespaces: vec!["demo".into()],
            not_ip_blocks: vec!["10.244.1.0/24".into()],
            ..Default::default()
        }],
        to: vec![api::Destination {
            ports: vec![8080],
            ..Default::default()
        }],
        when: vec![],
    };
    let policies = [policy(api::Action::Deny, vec![rule])];
    let c = id("client");
    let inside = src(Some(&c));
    let outside = Source {
        identity: Some(&c),
        ip: "10.244.2.7".parse().unwrap(),
    };
    assert!(decide(policies.iter(), &inside, 8080).is_allowed());
    assert!(matches!(
        decide(policies.iter(), &outside, 8080).decision,
        Decision::Deny { .. }
    ));
    assert!(decide(policies.iter(), &outside, 9090).is_allowed());
}

#[test]
fn l7_conditions_fail_closed_at_l4() {
    let l7 = api::Rule {
        from: vec![],
        to: vec![api::Destination {
            methods: vec!["GET".into()],
            ..Default::default()
        }],
        when: vec![],
    };
    let allow = [policy(api::Action::Allow, vec![l7.clone()])];
    assert!(matches!(
        decide(allow.iter(), &src(Some(&id("c"))), 80).decision,
        Decision::Deny { .. }
    ));
    let deny = [policy(api::Action::Deny, vec![l7])];
    assert!(matches!(
        decide(deny.iter(), &src(Some(&id("c"))), 80).decision,
        Decision::Deny { .. }
    ));
}

#[test]
fn malformed_policies_are_refused() {
    let bad = api::AuthorizationPolicy {
        name: "p".into(),
        namespace: "demo".into(),
        selector: None,
        action: 0,
        rules: vec![api::Rule {
            from: vec![api::Source {
                ip_blocks: vec!["10.0.0.0/40".into()],
                ..Default::default()
            }],
            to: vec![],
            when: vec![],
        }],
        dry_run: false,
    };
    let err = Policy::from_api(&bad).unwrap_err().to_string();
    assert!(
        err.contains("demo/p") && err.contains("10.0.0.0/40"),
        "{err}"
    );
}

#[test]
fn dry_run_policies_decide_nothing_and_report_what_they_would_deny() {
    let client = id("client");
    let other = id("other");
    let deny_client = dry_run(
        "deny-client",
        api::Action::Deny,
        vec![from_principal(client.as_str())],
    );
    let allow_other = dry_run(
        "allow-other",
        api::Action::Allow,
        vec![from_principal(other.as_str())],
    );
    let would = |v: &Verdict| match &v.would_deny {
        Some(Decision::Deny { policy, .. }) => Some(policy.to_string()),
        _ => None,
    };
    // A dry-run DENY that matches: allowed, and reported.
    let v = decide([deny_client.clone()].iter(), &src(Some(&client)), 80);
    assert!(v.is_allowed(), "{v:?}");
    assert_eq!(would(&v).as_deref(), Some("demo/deny-client"));
    // A dry-run ALLOW the client does not match: allowed, and reported.
    let v = decide([allow_other.clone()].iter(), &src(Some(&client)), 80);
    assert!(v.is_allowed(), "{v:?}");
    assert_eq!(would(&v).as_deref(), Some("demo/allow-other"));
    // Nothing to report when the dry run would allow too.
    let v = decide([allow_other.clone()].iter(), &src(Some(&other)), 80);
    assert_eq!((v.is_allowed(), would(&v)), (true, None));
    // An enforced policy still denies; the dry-run one neither helps nor is reported.
    let enforced = policy(api::Action::Deny, vec![from_principal(client.as_str())]);
    let v = decide([enforced, deny_client].iter(), &src(Some(&client)), 80);
    assert!(!v.is_allowed());
    assert_eq!(would(&v), None);
    // No dry-run policy: nothing computed twice, nothing reported.
    let v = decide(
        [policy(
            api::Action::Allow,
            vec![from_principal(client.as_str())],
        )]
        .iter(),
        &src(Some(&client)),
        80,
    );
    assert_eq!((v.is_allowed(), would(&v)), (true, None));
}
