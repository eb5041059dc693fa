use std::path::Path;

use super::load::line_of;
use super::*;

const GOOD: &str = r#"
app: shop
hosts:
  - deployer@203.0.113.10:22
ssh:
  identity_file: /keys/deploy
  known_hosts: .github/known_hosts
registry:
  server: ghcr.io
  username: octocat
  password_env: REGISTRY_TOKEN
services:
  web:
    image: ghcr.io/acme/web
    build: { context: ., dockerfile: Dockerfile }
    instances: [web-2, web-1]
    health:
      http: { port: 8080, path: /health }
      timeout: 60s
      interval: 1s
    drain:
      nginx: { upstream_conf: /etc/nginx/conf.d/shop.conf, reload: "nginx -s reload" }
    traffic: { url: "http://127.0.0.1:80/" }
    pause: 10s
"#;

fn parse_str(s: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/repo/capstan.yml"), s)
}

#[test]
fn design_example_parses() {
    let c = parse_str(GOOD).unwrap();
    assert_eq!(c.app, "shop");
    assert_eq!(c.hosts[0].to_string(), "deployer@203.0.113.10:22");
    assert_eq!(c.ssh.known_hosts.as_deref(), Some(Path::new("/repo/.github/known_hosts")));
    assert_eq!(c.state_dir, "/var/lib/capstan/shop");
    let web = &c.services[0];
    assert_eq!(web.instances, vec!["web-2", "web-1"]);
    assert_eq!(web.health.timeout, Duration::from_secs(60));
    assert_eq!(web.health.healthy_after, 3);
    assert_eq!(web.pause, Duration::from_secs(10));
    assert!(matches!(web.drain.method, DrainMethod::Nginx { .. }));
    assert_eq!(web.traffic.as_ref().unwrap().requests, 10);
    let build = web.build.as_ref().unwrap();
    assert_eq!(build.context, Path::new("/repo/."));
    assert_eq!(build.dockerfile, Path::new("/repo/./Dockerfile"));
    assert_eq!(build.tags, crate::core::tags::TagKind::ALL.to_vec());
    assert!(!c.raw_tags);
    assert!(!c.prereleases);
    let c = parse_str(&GOOD.replace("app: shop", "app: shop\nrelease: { prereleases: true }")).unwrap();
    assert!(c.prereleases);
}

#[test]
fn validation_errors_carry_the_line() {
    let e = parse_str(&GOOD.replace("timeout: 60s", "timeout: sixty")).unwrap_err();
    assert_eq!(e.issues[0].line, Some(19), "the line of health.timeout: {e}");
    assert_eq!(line_of("a:\n  b: { c: 1, d: 2 }\n", "a.b.d"), Some(2));
    assert_eq!(line_of("a: 1\n", "x.y"), None);
}

#[test]
fn build_blocks() {
    let c = parse_str(&GOOD.replace(
        "build: { context: ., dockerfile: Dockerfile }",
        "build:\n      context: app\n      dockerfile: docker/Dockerfile.prod\n      args: { RUST_VERSION: \"1.80\" }\n      target: runtime\n      labels: { team: storefront }\n      tags: [version, latest]",
    ).replace("app: shop", "app: shop\nrelease: { raw_tags: true }"))
    .unwrap();
    let b = c.services[0].build.as_ref().unwrap();
    assert_eq!(b.context, Path::new("/repo/app"));
    assert_eq!(b.dockerfile, Path::new("/repo/app/docker/Dockerfile.prod"));
    assert_eq!(b.args["RUST_VERSION"], "1.80");
    assert_eq!(b.target.as_deref(), Some("runtime"));
    assert_eq!(b.labels["team"], "storefront");
    assert_eq!(b.tags, vec![crate::core::tags::TagKind::Version, crate::core::tags::TagKind::Latest]);
    assert!(c.raw_tags);
    let e = parse_str(&GOOD.replace("dockerfile: Dockerfile }", "dockerfile: Dockerfile, tags: [version, nightly], target: \"a b\" }")).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("services.web.build.tags[1]: unknown tag kind \"nightly\""), "{text}");
    assert!(text.contains("services.web.build.target: expected the name of a build stage"), "{text}");
}

/// One bad edit of the good file per case: the error must name the key path and say what was expected.
#[test]
fn errors_name_the_key_and_the_expectation() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("timeout: 60s", "timeout: sixty", "services.web.health.timeout", "expected a duration"),
        ("pause: 10s", "pause: 10 parsecs", "services.web.pause", "expected a duration"),
        ("pause: 10s", "pause: 10s\n    paus: 1s", "services.web.paus", "unknown field `paus`"),
        ("app: shop", "app: shop\nregion: eu", "region", "unknown field `region`"),
        ("port: 8080", "port: eighty", "services.web.health.http.port", "expected a whole number from 1 to 65535"),
        ("password_env: REGISTRY_TOKEN", "password_env: hunter2 secret", "registry.password_env", "NAME of an environment variable"),
        ("instances: [web-2, web-1]", "instances: [web-2, \"web;rm -rf /\"]", "services.web.instances[1]", "invalid instance name"),
        ("instances: [web-2, web-1]", "instances: []", "services.web.instances", "expected the names"),
        ("deployer@203.0.113.10:22", "deployer@203.0.113.10:notaport", "hosts[0]", "port"),
        ("deployer@203.0.113.10:22", "-oProxyCommand=evil", "hosts[0]", "invalid host"),
        ("image: ghcr.io/acme/web", "image: ghcr.io/acme/web:v1", "services.web.image", "without a tag"),
        ("upstream_conf: /etc/nginx/conf.d/shop.conf", "upstream_conf: shop.conf", "services.web.drain.nginx.upstream_conf", "absolute path"),
        ("url: \"http://127.0.0.1:80/\"", "url: \"ftp://x\"", "services.web.traffic.url", "http://"),
        ("app: shop", "app: \"sh op\"", "app", "invalid app name"),
        ("interval: 1s", "interval: 2m", "services.web.health.timeout", "at least as long"),
        ("app: shop", "app: shop\nrollout: { parallel: 0 }", "rollout.parallel", "at least 1"),
        ("app: shop", "app: shop\nrollout: { canary: 1 }", "rollout.canary", "fewer canary hosts than hosts (1)"),
        ("app: shop", "app: shop\nrollout: { on_failure: shrug }", "rollout.on_failure", "revert_all or revert_host"),
        ("app: shop", "app: shop\nroles: { web: [10.0.0.9] }", "roles.web[0]", "is not one of hosts:"),
        ("pause: 10s", "pause: 10s\n    hosts: [jobs]", "services.web.hosts[0]", "neither a role (roles: none defined)"),
    ];
    for (from, to, path, expect) in cases {
        assert!(GOOD.contains(from), "bad case: {from}");
        let text = GOOD.replacen(from, to, 1);
        let err = parse_str(&text).expect_err(&format!("{to:?} should be refused"));
        let shown = err.to_string();
        assert!(err.issues.iter().any(|i| i.path == *path && i.message.contains(expect)), "case {to:?}: expected path {path:?} and {expect:?}, got:\n{shown}");
        assert!(shown.starts_with("/repo/capstan.yml"), "names the file: {shown}");
    }
}

#[test]
fn roles_and_service_hosts() {
    let text = GOOD
        .replacen("  - deployer@203.0.113.10:22\n", "  - deployer@203.0.113.10:22\n  - deployer@203.0.113.11\n  - deployer@203.0.113.12\n", 1)
        .replacen("services:\n", "roles:\n  web: [203.0.113.10, deployer@203.0.113.11]\n  jobs: [203.0.113.12]\nrollout: { parallel: 2, canary: 1, on_failure: revert_host }\nservices:\n", 1)
        .replacen("pause: 10s", "pause: 10s\n    hosts: [web, 203.0.113.12]", 1);
    let c = parse_str(&text).unwrap();
    assert_eq!(c.rollout, HostRollout { parallel: 2, canary: 1, on_failure: OnFailure::RevertHost });
    assert_eq!(c.roles["web"].iter().map(|h| h.to_string()).collect::<Vec<_>>(), ["deployer@203.0.113.10:22", "deployer@203.0.113.11"]);
    let web = &c.services[0];
    assert_eq!(web.hosts.len(), 3);
    assert!(c.hosts.iter().all(|h| web.runs_on(h)));
    // Without `hosts:` a service runs everywhere; the default rolls every host at once and reverts all.
    let c = parse_str(GOOD).unwrap();
    assert!(c.services[0].hosts.is_empty() && c.services[0].runs_on(&c.hosts[0]));
    assert_eq!(c.rollout, HostRollout { parallel: 1, canary: 0, on_failure: OnFailure::RevertAll });
}

#[test]
fn type_errors_carry_a_line() {
    let text = GOOD.replacen("port: 8080", "port: eighty", 1);
    let err = parse_str(&text).unwrap_err();
    assert_eq!(err.issues[0].line, Some(18), "{err}");
}

#[test]
fn all_problems_are_reported_together() {
    let text = GOOD.replacen("timeout: 60s", "timeout: x", 1).replacen("pause: 10s", "pause: y", 1);
    let err = parse_str(&text).unwrap_err();
    assert_eq!(err.issues.len(), 2, "{err}");
    assert!(err.to_string().contains("2 problems"));
}

#[test]
fn swarm_targets() {
    let swarm = |block: &str| GOOD.replacen("services:\n", &format!("services:\n  api:\n    image: ghcr.io/acme/api\n    target: swarm\n{block}"), 1);
    let c = parse_str(&swarm("")).unwrap();
    let api = c.service("api").unwrap();
    assert_eq!(api.plan_names(), ["shop_api"], "named like docker stack deploy names it");
    assert_eq!(
        api.swarm,
        Some(SwarmTarget {
            service: "shop_api".into(),
            parallelism: 1,
            delay: Duration::ZERO,
            order: SwarmOrder::StartFirst,
            failure_action: SwarmFailureAction::Rollback,
            monitor: Duration::from_secs(5),
            max_failure_ratio: 0.0,
            timeout: Duration::from_secs(600),
        })
    );
    assert!(api.instances.is_empty() && c.service("web").unwrap().swarm.is_none());
    let block = "    swarm: { service: shop-api, parallelism: 2, delay: 10s, order: stop-first, failure_action: pause, monitor: 30s, max_failure_ratio: 0.5, timeout: 3m }\n";
    let sw = parse_str(&swarm(block)).unwrap().service("api").unwrap().swarm.clone().unwrap();
    assert_eq!((sw.service.as_str(), sw.parallelism, sw.delay, sw.order), ("shop-api", 2, Duration::from_secs(10), SwarmOrder::StopFirst));
    assert_eq!(
        (sw.failure_action, sw.monitor, sw.max_failure_ratio, sw.timeout),
        (SwarmFailureAction::Pause, Duration::from_secs(30), 0.5, Duration::from_secs(180))
    );

    let cases: &[(&str, &str, &str)] = &[
        ("    swarm: { order: random }\n", "services.api.swarm.order", "expected start-first or stop-first"),
        ("    swarm: { failure_action: retry }\n", "services.api.swarm.failure_action", "expected rollback, pause or continue"),
        ("    swarm: { delay: soon }\n", "services.api.swarm.delay", "expected a duration"),
        ("    swarm: { monitor: 5 parsecs }\n", "services.api.swarm.monitor", "expected a duration"),
        ("    swarm: { timeout: 0s }\n", "services.api.swarm.timeout", "above zero"),
        ("    swarm: { max_failure_ratio: 1.5 }\n", "services.api.swarm.max_failure_ratio", "from 0 to 1"),
        ("    swarm: { parallelism: -1 }\n", "services.api.swarm.parallelism", ""),
        ("    swarm: { service: \"a b\" }\n", "services.api.swarm.service", "invalid Swarm service name"),
        ("    swarm: { service: api_ }\n", "services.api.swarm.service", "end with a letter or digit"),
        ("    swarm: { replicas: 3 }\n", "services.api.swarm.replicas", "unknown field `replicas`"),
        ("    instances: [api-1]\n", "services.api.instances", "Swarm runs its tasks"),
        ("    drain: { nginx: { upstream_conf: /etc/nginx/api.conf } }\n", "services.api.drain", "cannot drain them one by one"),
        ("    pause: 5s\n", "services.api.pause", "swarm.delay"),
        ("    migrate: { command: [migrate] }\n", "services.api.migrate", "pre_deploy hook"),
    ];
    for (block, path, expect) in cases {
        let err = parse_str(&swarm(block)).expect_err(&format!("{block:?} should be refused"));
        assert!(err.issues.iter().any(|i| i.path == *path && i.message.contains(expect)), "case {block:?}: expected {path:?} and {expect:?}, got:\n{err}");
    }
    // target: and swarm: themselves.
    let err = parse_str(&swarm("").replace("target: swarm", "target: kubernetes")).unwrap_err();
    assert!(err.issues.iter().any(|i| i.path == "services.api.target" && i.message.contains("containers (the default) or swarm")), "{err}");
    let err = parse_str(&GOOD.replacen("pause: 10s", "pause: 10s\n    swarm: { parallelism: 2 }", 1)).unwrap_err();
    assert!(err.issues.iter().any(|i| i.path == "services.web.swarm" && i.message.contains("add `target: swarm`")), "{err}");
    let err = parse_str(&swarm("").replacen("app: shop", "app: shop.eu", 1)).unwrap_err();
    assert!(
        err.issues.iter().any(|i| i.path == "services.api.swarm.service" && i.message.contains("(the default, <app>_<service>; set swarm.service)")),
        "{err}"
    );
    // Updated through one manager: with several hosts, exactly one.
    let two = swarm("").replacen("  - deployer@203.0.113.10:22\n", "  - deployer@203.0.113.10:22\n  - deployer@203.0.113.11\n", 1);
    let err = parse_str(&two).unwrap_err();
    assert!(err.issues.iter().any(|i| i.path == "services.api.hosts" && i.message.contains("exactly one host")), "{err}");
    assert!(parse_str(&two.replacen("target: swarm\n", "target: swarm\n    hosts: [203.0.113.11]\n", 1)).is_ok());
}

#[test]
fn an_instance_cannot_belong_to_two_services() {
    let text = format!("{GOOD}  worker:\n    image: ghcr.io/acme/worker\n    instances: [web-1]\n");
    let err = parse_str(&text).unwrap_err();
    assert!(err.issues.iter().any(|i| i.path == "services.worker.instances[0]" && i.message.contains("services.web")), "{err}");
}
