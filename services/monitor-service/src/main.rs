#[tokio::main]
async fn main() -> std::process::ExitCode {
    dialstack_common::service::main::<monitor_service::Application>("monitor-service").await
}
