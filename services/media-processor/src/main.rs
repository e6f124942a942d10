#[tokio::main]
async fn main() -> std::process::ExitCode {
    dialstack_common::service::main::<media_processor::Application>("media-processor").await
}
