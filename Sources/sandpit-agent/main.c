// sandpit-agent: PID 1 inside every sandbox. All of its logic is in CSandpit.
#include "../CSandpit/include/sp_agent.h"

int main(int argc, char **argv) { return sp_agent_main(argc, argv); }
