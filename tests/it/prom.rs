//! A real Prometheus scraping the demo app, its answers read through capstan's
//! own parser (`src/core/promql.rs`, which uses nothing else of capstan's): the
//! parts of the query gates that need no rollout.

use std::time::Duration;

use crate::support::http::get;
use crate::support::prometheus::Prometheus;
use crate::support::{wait_for, App, AppOptions};
use crate::{sandbox, shared};

#[path = "../../src/core/promql.rs"]
#[allow(dead_code)]
mod promql;

use promql::{parse_answer, Answer, AnswerError, Comparison};

/// The demo app answers a quarter of its requests with 500 (`DEMO_ERROR_RATE`);
/// Prometheus scrapes its `/metrics`; the counts, the error ratio of a query
/// with the instance's address filled in, an empty answer, NaN and a refused
/// query all read back as the gates will read them.
#[test]
fn prometheus_scrapes_the_demo_app_and_its_answers_read_back() {
    let _turn = shared();
    let sb = sandbox();
    let opts = AppOptions { instances: 1, env: vec!["DEMO_ERROR_RATE=0.25".into()], ..AppOptions::default() };
    let app = App::new(sb, "prom", opts);
    let instance = &app.instances()[0];
    let address = format!("127.0.0.1:{}", app.instance_port(instance).expect("the instance's published port"));
    for _ in 0..40 {
        get(&app.lb_url()).expect("a request through nginx");
    }
    // Probes and scrapes are not the app's traffic.
    assert_eq!(get(&format!("http://{address}/health")).unwrap().status, 200);
    // What the app counted itself (the 40, and nginx's check of its start): every fourth a 500.
    let metrics = get(&format!("http://{address}/metrics")).unwrap().body;
    let counted = |status: &str| -> f64 {
        let prefix = format!("demo_requests_total{{status=\"{status}\"}} ");
        let line = metrics.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"));
        line.parse().unwrap()
    };
    let (ok, failed) = (counted("200"), counted("500"));
    assert!(ok + failed >= 40.0 && failed == ((ok + failed) / 4.0).floor(), "{metrics}");

    let prom = Prometheus::start(std::slice::from_ref(&address), Duration::from_secs(1));
    let scraped = wait_for(Duration::from_secs(30), Duration::from_millis(250), || match parse_answer(&prom.query("demo_requests_total").body) {
        Ok(Answer::Vector(s)) if s.len() == 2 => Some(s),
        _ => None,
    })
    .unwrap_or_else(|| panic!("Prometheus never scraped {address}; its log:\n{}", prom.log()));
    let by_status: Vec<(String, String, f64)> = scraped.iter().map(|s| (s.labels["status"].clone(), s.labels["instance"].clone(), s.value)).collect();
    assert_eq!(by_status, [("200".into(), address.clone(), ok), ("500".into(), address.clone(), failed)]);

    // The gate's query for this instance: a ratio of about 0.25, which `< 0.01` refuses.
    let query = promql::fill(
        r#"sum(demo_requests_total{instance="{address}",status=~"5.."}) / sum(demo_requests_total{instance="{address}"})"#,
        &[("instance", instance), ("address", &address), ("service", "web")],
    );
    let ratio = parse_answer(&prom.query(&query).body).unwrap();
    let values = ratio.values();
    assert_eq!(values.len(), 1, "{ratio:?}");
    assert_eq!(values[0].1, failed / (ok + failed));
    assert!(!Comparison::parse("< 0.01").unwrap().holds(values[0].1));
    assert!(Comparison::parse("<= 0.25").unwrap().holds(values[0].1));

    // Nothing matched; NaN; a PromQL syntax error.
    assert_eq!(parse_answer(&prom.query(r#"demo_requests_total{instance="nowhere:1"}"#).body).unwrap(), Answer::Vector(vec![]));
    match parse_answer(&prom.query("0/0").body).unwrap() {
        Answer::Scalar(v) => assert!(v.is_nan(), "{v}"),
        other => panic!("0/0 should be a NaN scalar: {other:?}"),
    }
    let refused = prom.query("sum(demo_requests_total");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(matches!(parse_answer(&refused.body), Err(AnswerError::Refused { ref kind, .. }) if kind == "bad_data"), "{}", refused.body);
}
