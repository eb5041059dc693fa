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

/// The runbook's thresholds: error rate under 0.1 % (alert above 1 %), p95 under 100 ms
/// (alert above 500 ms), CPU under 80 %, memory stable.
const RUNBOOK_GATES: &str = r#"gates:
  window: 45s
  traffic:
    access_log: /var/log/nginx/capstan.log
    min_requests: 200
    max_error_rate: 1%
    max_error_rate_increase: 0.1%
    max_p95: 500ms
    max_p95_ratio: 2.0
  resources:
    max_cpu: 80%
    max_memory_ratio: 1.5
  prometheus:
    url: http://127.0.0.1:9090
    queries:
      - name: 5xx ratio
        query: 'sum(rate(demo_requests_total{instance="{address}",status=~"5.."}[1m])) / sum(rate(demo_requests_total{instance="{address}"}[1m]))'
        expect: "< 0.001"
        no_data: pass
      - query: 'max(pg_stat_activity_count{datname="shop"})'
        expect: "<= 80"
"#;

fn with_gates(gates: &str) -> String {
    GOOD.replacen("services:\n", &format!("{gates}services:\n"), 1)
}

#[test]
fn gates_encode_the_runbook() {
    let c = parse_str(&with_gates(RUNBOOK_GATES)).unwrap();
    let g = &c.services[0].gates;
    assert_eq!(g.window, Duration::from_secs(45));
    assert_eq!(
        g.traffic,
        Some(TrafficGate {
            access_log: AccessLog::File("/var/log/nginx/capstan.log".into()),
            min_requests: 200,
            too_little_traffic: IfUndecided::Pass,
            max_error_rate: Some(0.01),
            max_error_rate_increase: Some(0.001),
            max_p95: Some(Duration::from_millis(500)),
            max_p95_ratio: Some(2.0),
        })
    );
    assert_eq!(g.resources, Some(ResourceGate { max_cpu: Some(80.0), max_memory: None, max_memory_ratio: Some(1.5) }));
    let p = g.prometheus.as_ref().unwrap();
    assert_eq!(p.url, "http://127.0.0.1:9090");
    assert_eq!(
        p.queries.iter().map(|q| (q.name.as_str(), q.expect.to_string(), q.no_data)).collect::<Vec<_>>(),
        [("5xx ratio", "< 0.001".to_string(), IfUndecided::Pass), ("query 2", "<= 80".to_string(), IfUndecided::Fail)]
    );
    // No gates: none, and the default window.
    let c = parse_str(GOOD).unwrap();
    assert_eq!(c.services[0].gates, Gates { window: Gates::DEFAULT_WINDOW, ..Gates::default() });
}

#[test]
fn a_service_sets_its_own_gates_gate_by_gate() {
    let text = with_gates(RUNBOOK_GATES).replacen(
        "    pause: 10s\n",
        "    pause: 10s\n    gates:\n      traffic: { max_p95: 100ms, too_little_traffic: fail, access_log: { container: lb } }\n",
        1,
    );
    let g = parse_str(&text).unwrap().services.remove(0).gates;
    let t = g.traffic.unwrap();
    assert_eq!(
        (t.max_p95, t.max_error_rate, t.min_requests),
        (Some(Duration::from_millis(100)), None, 100),
        "the service's gate replaces the top level's whole"
    );
    assert_eq!((t.access_log, t.too_little_traffic), (AccessLog::Container("lb".into()), IfUndecided::Fail));
    assert_eq!(g.window, Duration::from_secs(45), "the window and the other gates come from the top level");
    assert!(g.resources.is_some() && g.prometheus.is_some());
    // Without access_log, nginx's container's output when nginx runs in one.
    let text =
        with_gates("gates:\n  traffic: { max_error_rate: 1% }\n").replacen("reload: \"nginx -s reload\" }", "reload: \"nginx -s reload\", container: lb }", 1);
    let t = parse_str(&text).unwrap().services.remove(0).gates.traffic.unwrap();
    assert_eq!(t.access_log, AccessLog::Container("lb".into()));
    // A top-level traffic gate skips a service that nginx does not drain; its own is refused.
    let worker = "  worker:\n    image: ghcr.io/acme/worker\n    instances: [worker-1]\n";
    let c = parse_str(&format!("{}{worker}", with_gates(RUNBOOK_GATES))).unwrap();
    assert!(c.service("worker").unwrap().gates.traffic.is_none() && c.service("worker").unwrap().gates.resources.is_some());
    let err = parse_str(&format!("{}{worker}    gates: {{ traffic: {{ max_p95: 1s, access_log: /x.log }} }}\n", GOOD)).unwrap_err();
    assert!(err.issues.iter().any(|i| i.path == "services.worker.gates.traffic" && i.message.contains("not drained through nginx")), "{err}");
}

/// One bad edit of the runbook's gates per case: the key path and what was expected.
#[test]
fn gate_errors_name_the_key() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("max_error_rate: 1%", "max_error_rate: 0.01", "gates.traffic.max_error_rate", "expected a percentage like 1% or 0.1%"),
        ("max_error_rate: 1%", "max_error_rate: 150%", "gates.traffic.max_error_rate", "from 0% to 100%"),
        ("max_error_rate_increase: 0.1%", "max_error_rate_increase: lots", "gates.traffic.max_error_rate_increase", "percentage"),
        ("max_p95: 500ms", "max_p95: fast", "gates.traffic.max_p95", "expected a duration"),
        ("max_p95: 500ms", "max_p95: 0s", "gates.traffic.max_p95", "above zero"),
        ("max_p95_ratio: 2.0", "max_p95_ratio: 0.5", "gates.traffic.max_p95_ratio", "at least 1"),
        ("max_p95_ratio: 2.0", "max_p96: 2.0", "gates.traffic.max_p96", "unknown field `max_p96`"),
        ("min_requests: 200", "min_requests: 0", "gates.traffic.min_requests", "at least 1"),
        ("min_requests: 200", "min_requests: 200\n    too_little_traffic: shrug", "gates.traffic.too_little_traffic", "expected pass or fail"),
        ("access_log: /var/log/nginx/capstan.log", "access_log: capstan.log", "gates.traffic.access_log", "absolute path"),
        ("access_log: /var/log/nginx/capstan.log", "access_log: { container: \"a b\" }", "gates.traffic.access_log.container", "invalid container name"),
        ("    access_log: /var/log/nginx/capstan.log\n", "", "gates.traffic.access_log", "drain.nginx names no container"),
        ("    max_error_rate: 1%\n    max_error_rate_increase: 0.1%\n    max_p95: 500ms\n    max_p95_ratio: 2.0\n", "", "gates.traffic", "at least one limit"),
        ("window: 45s", "window: 0s", "gates.window", "above zero"),
        ("max_cpu: 80%", "max_cpu: 80", "gates.resources.max_cpu", "percentage"),
        ("max_memory_ratio: 1.5", "max_memory: lots", "gates.resources.max_memory", "expected a size like 512MiB"),
        ("url: http://127.0.0.1:9090", "url: 127.0.0.1:9090", "gates.prometheus.url", "http:// URL as seen from the host"),
        ("expect: \"< 0.001\"", "expect: \"0.001\"", "gates.prometheus.queries[0].expect", "expected a comparison like \"< 0.01\""),
        ("expect: \"<= 80\"", "expect: \"<= eighty\"", "gates.prometheus.queries[1].expect", "expected a number after <="),
        ("no_data: pass", "no_data: maybe", "gates.prometheus.queries[0].no_data", "expected pass or fail"),
        ("instance=\"{address}\",status", "instance=\"{adress}\",status", "gates.prometheus.queries[0].query", "unknown placeholder {adress}"),
        ("      - name: 5xx ratio\n", "      - name: query 2\n", "gates.prometheus.queries[1].name", "a name of its own"),
    ];
    let base = with_gates(RUNBOOK_GATES);
    for (from, to, path, expect) in cases {
        assert!(base.contains(from), "bad case: {from}");
        let err = parse_str(&base.replacen(from, to, 1)).expect_err(&format!("{to:?} should be refused"));
        assert!(err.issues.iter().any(|i| i.path == *path && i.message.contains(expect)), "case {to:?}: expected path {path:?} and {expect:?}, got:\n{err}");
        assert!(err.to_string().starts_with("/repo/capstan.yml"), "names the file: {err}");
    }
    // The line of the key, as for any other.
    let err = parse_str(&base.replacen("max_p95: 500ms", "max_p95: fast", 1)).unwrap_err();
    let line = base.lines().position(|l| l.contains("max_p95: 500ms")).unwrap() as u64 + 1;
    assert_eq!(err.issues[0].line, Some(line), "{err}");
}
