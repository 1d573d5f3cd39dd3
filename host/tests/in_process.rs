//! The whole server in this test's process, through the library's one entry (`App::build`,
//! `Listeners::bind`, `fibhost::run`) on port 0: no binary, no signals. Shutdown and reloads
//! are the same channels the binary feeds from SIGTERM and SIGHUP.

use std::time::Duration;

use fibhost::config::Settings;
use fibhost::{App, Listeners};
use fibhost_e2e::{Http, eventually, guests};
use tokio::sync::{mpsc, oneshot};

fn settings(component: &str) -> Settings {
    Settings {
        component: Some(component.into()),
        workers: Some(2),
        threads: Some(2),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        disable_logging: Some(true),
        ..Settings::default()
    }
}

#[tokio::test]
async fn the_whole_server_runs_reloads_and_drains_in_process() {
    let config = settings(guests::TESTBED).resolve().unwrap();
    let (access_log, _flush) = fibhost::logging::init(config.log_format);
    let app = App::build(config.clone(), access_log).await.unwrap();
    let listeners = Listeners::bind(&config).unwrap();
    let addr = listeners.public_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (reload, reloads) = mpsc::channel(1);
    let server = tokio::spawn(fibhost::run(
        app,
        listeners,
        async {
            let _ = stopped.await;
        },
        reloads,
    ));

    let http = Http::new();
    let url = format!("http://{addr}/version");
    assert_eq!(http.get(&url).await.unwrap().text(), "v1");

    // What SIGHUP does: a re-read configuration naming another build of the component.
    let v2 = settings(guests::TESTBED_V2).resolve();
    reload.send(v2).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the reloaded version serving",
        || async { (http.get(&url).await.ok()?.text() == "v2").then_some(()) },
    )
    .await;

    // What SIGTERM does: the drain ends and `run` returns.
    drop(http);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after the drain"
    );
}
