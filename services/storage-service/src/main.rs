#[tokio::main]
async fn main() -> std::process::ExitCode {
    dialstack_common::service::main::<storage_service::Application>("storage-service").await
}
