//! The PostgreSQL test support (`tests/process/postgres.rs`): two throwaway servers started at
//! once, each reached over TCP with the driver the control plane uses, and gone (process and
//! directory) once dropped.

mod process;

use process::postgres::{Postgres, alive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_start_at_once_answer_and_stop_by_pid() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(Postgres::start);
        let b = s.spawn(Postgres::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.pid(), b.pid());

    for pg in [&a, &b] {
        let url = pg.url();
        assert_eq!(url, format!("postgres://rampart@127.0.0.1:{}/rampart", pg.port()));
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        let row = client.query_one("SELECT 1::INT4, current_database()", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        assert_eq!(row.get::<_, String>(1), "rampart");
        drop(client);
        driver.await.unwrap().unwrap();
    }

    // Another database on the same server.
    let other = a.create_database("second");
    let (client, connection) = tokio_postgres::connect(&other, tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    let row = client.query_one("SELECT current_database()", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "second");
    drop(client);
    driver.await.unwrap().unwrap();

    let (pids, dirs) = ([a.pid(), b.pid()], [a.path().to_owned(), b.path().to_owned()]);
    assert!(pids.iter().all(|&pid| alive(pid)));
    drop((a, b));
    for (pid, dir) in pids.iter().zip(&dirs) {
        assert!(!alive(*pid), "postmaster {pid} still running");
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
}
